"""`diffrl refine`: PPO adapts a grasp dataset to a scenario (the host shell).

Owns files, progress and logging; the environment, PPO and adaptation are the
library's pure functions. OUTDIR holds:

    run.json            everything needed to rebuild the run (configs, dataset, scenario)
    checkpoints/<it>/   orbax: params, optimizer state, normaliser, env state, key, step
    metrics.jsonl       one line per PPO iteration
    tensorboard/        the same metrics as TensorBoard scalars (best effort: a full disk stops them)
    learning_curve.png  success and reward against environment steps
    adapted/            the adapted dataset (DexGraspNet format, with labels
                        success, refined, heldout, source_index)
    adaptation.npz      per raw grasp: raw_success, success, keep, refined, heldout, attempts
    summary.json        the per-object figures (also printed by --json)

Training runs in blocks of iterations (one compiled `lax.scan` each) with a
checkpoint after every block; `--resume` continues from the last one, so a
killed run ends where an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

from diffrl_jax.cli.common import (non_negative_floats, non_negative_int, positive_int, resume_step,
                                   typed_assignments)
from diffrl_jax.files import (read_jsonl, save_figure_atomic, staged_directory, write_json_atomic,
                              write_jsonl_atomic, write_npz_atomic)
from diffrl_jax.errors import ConfigError

SCENARIOS = {
    "default": {},
    "low-friction": {"friction": 0.5},
    "heavy": {"mass_scale": 2.0},
    "weak": {"finger_strength": 0.5},
}

# Presets: the CPU one is a reduced run on MuJoCo's C engine; the GPU one runs
# the hold test in MJX on the accelerator. Episodes of 3 corrections, each
# after the first from the last settled grasp: with 8 random attempts of std
# 0.1 that fixed 34 of 90 raw failures, one correction 9 (benchmarks/
# RESULTS.md, "The settled grasp"). The policy's initial spread is 0.1
# (action units): under the hold test's penetration bound, single random
# corrections of std 0.1 fixed 20 of 90 raw failures in 32 attempts, 0.05 18,
# 0.2 14 and 0.5 one (benchmarks/RESULTS.md, "The penetration bound").
# Exploration is per step, 0.2 on the first correction and none added on the
# settled ones: the same policy's attempts fixed 213 of the 519 shared raw
# failures so, 193 with 0.1 on every step (RESULTS, "Per-step exploration").
PRESETS = {
    "cpu": {"backend": "mujoco", "ppo": dict(num_envs=128, num_iterations=40, num_minibatches=2,
                                             num_epochs=4, learning_rate=3e-4, entropy_cost=1e-3,
                                             init_action_std=0.1,
                                             policy_hidden_sizes=(256, 256),
                                             value_hidden_sizes=(256, 256)),
            "block": 5, "attempts": 32, "explore": [0.2, 0.0], "chunk": 64, "robustness": 16, "steps": 3},
    "gpu": {"backend": "mjx", "ppo": dict(num_envs=1024, num_iterations=60, num_minibatches=8,
                                          num_epochs=4, learning_rate=3e-4, entropy_cost=1e-3,
                                          init_action_std=0.1,
                                          policy_hidden_sizes=(256, 256),
                                          value_hidden_sizes=(256, 256)),
            "block": 5, "attempts": 128, "explore": [0.2, 0.0], "chunk": 1024, "robustness": 16, "steps": 3},
}


def _scenario(args) -> tuple[str, dict]:
    from diffrl_jax.sim.protocol import HoldProtocol

    if args.scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {args.scenario!r}; choose one of {sorted(SCENARIOS)}")
    overrides = dict(SCENARIOS[args.scenario])
    overrides.update(typed_assignments(args.set, "--set", HoldProtocol, "protocol"))
    return args.scenario, overrides


def _configs(args):
    from diffrl_jax.rl import ppo
    from diffrl_jax.rl.refine_env import RefineConfig
    from diffrl_jax.sim.protocol import protocol

    preset = PRESETS[args.preset]
    name, overrides = _scenario(args)
    hold = protocol(args.protocol, **overrides)
    ppo_overrides = dict(preset["ppo"])
    ppo_overrides.update(typed_assignments(args.ppo, "--ppo", ppo.PPOConfig, "PPO config"))
    if args.iterations is not None:
        ppo_overrides["num_iterations"] = args.iterations
    if args.envs is not None:
        ppo_overrides["num_envs"] = args.envs
    refine_overrides = typed_assignments(args.refine, "--refine", RefineConfig, "refine config")
    if args.steps is not None:
        refine_overrides["steps"] = args.steps
    refine_overrides.setdefault("steps", preset["steps"])
    refine_config = RefineConfig().replace(**refine_overrides)
    ppo_overrides.setdefault("episode_length", refine_config.steps)
    ppo_config = ppo.PPOConfig().replace(**ppo_overrides).validate()
    backend = args.backend or preset["backend"]
    return name, hold, ppo_config, refine_config, backend, preset


def _run_record(args, scenario, hold, ppo_config, refine_config, backend, preset) -> dict:
    from diffrl_jax.sim.validate import protocol_json

    return {
        "dataset": str(pathlib.Path(args.dir).resolve()),
        "objects": args.objects, "limit": args.limit,
        "scenario": scenario, "protocol": protocol_json(hold),
        "ppo": ppo_config.to_json(), "refine": refine_config.to_json(),
        "backend": backend, "preset": args.preset, "seed": args.seed,
        "heldout_fraction": args.heldout, "budget_pieces": args.budget_pieces,
        "block": args.block or preset["block"], "attempts": args.attempts or preset["attempts"],
        "explore": _explore(args, preset, refine_config.steps), "robustness": _robustness_samples(args, preset),
        # Recorded only when used, so runs from before --rounds still resume.
        **({"rounds": args.rounds} if (args.rounds or 1) > 1 else {}),
    }


def _explore(args, preset, steps: int) -> float | list[float]:
    """The adaptation's exploration std: one number, or one per step (as run.json records it,
    so runs from before per-step values still resume). A preset's per-step values are cut to
    the episode's `steps`; more values given than steps is the user's error (see
    `refine.exploration_schedule`)."""
    values = preset["explore"] if args.explore is None else args.explore
    values = (values,) if isinstance(values, (int, float)) else tuple(values)
    if args.explore is None:
        values = values[:steps]
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]


def _robustness_samples(args, preset) -> int:
    return preset["robustness"] if args.robustness is None else args.robustness


def _number(value) -> float:
    """A metric as a float: NaN for a missing one or a null read back from metrics.jsonl."""
    return float("nan") if value is None else float(value)


def _plot_learning_curve(records: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["env_steps"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in (("env/success", "success rate"), ("env/reward/held", "directions held")):
        if records and key in records[0]:
            axes[0].plot(steps, [_number(r.get(key)) for r in records], label=label)
    axes[0].set_xlabel("environment steps")
    axes[0].set_ylim(0, 1)
    axes[0].legend()
    axes[0].set_title("training grasps")
    axes[1].plot(steps, [_number(r.get("reward")) for r in records])
    axes[1].set_xlabel("environment steps")
    axes[1].set_title("mean reward")
    fig.tight_layout()
    save_figure_atomic(fig, path)


class _TensorBoard:
    """The metrics as TensorBoard scalars under OUTDIR/tensorboard: best effort.

    A copy of metrics.jsonl (which is written atomically and is what a
    resumed run reads) for viewing while a run trains. tensorboardX appends
    from a background thread, so a refused write (a full disk) cannot be an
    `OutputError` of the command: it stops the copy with one warning, and the
    queue is unbounded so that a writer thread that died never blocks the run.
    """

    def __init__(self, logdir: pathlib.Path, purge_step: int):
        self._writer = None
        try:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(logdir), purge_step=purge_step, max_queue=1 << 20)
        except OSError as e:
            self._stop(e)

    def _stop(self, e: OSError) -> None:
        print(f"warning: TensorBoard events stopped ({e.strerror or e}); metrics.jsonl has every metric",
              file=sys.stderr)
        self._writer = None

    def _call(self, method: str, *args) -> None:
        """`writer.method(*args)`, unless the events stopped; a refused write stops them."""
        if self._writer is not None:
            try:
                getattr(self._writer, method)(*args)
            except OSError as e:
                self._stop(e)

    def add_row(self, row: dict) -> None:
        for k, v in row.items():
            # NaN: no episode finished this iteration (or a diverged loss,
            # which metrics.jsonl keeps as null); TensorBoard has no NaN point to draw.
            if k not in ("iteration", "env_steps") and math.isfinite(v):
                self._call("add_scalar", k, v, row["iteration"])

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")


def _scalars(metrics: dict, index: int) -> dict:
    import numpy as np

    return {k: float(np.asarray(v)[index]) for k, v in metrics.items()}


def _problem(record: dict, dataset, progress=None):
    """The problem and training environment of a run record (see `_run_record`)."""
    from diffrl_jax.rl import refine
    from diffrl_jax.rl.refine_env import RefineConfig
    from diffrl_jax.sim.bank import ObjectBudget
    from diffrl_jax.sim.protocol import HoldProtocol

    fields = {k: (float("inf") if v is None else v) for k, v in record["protocol"].items()}
    hold = HoldProtocol(**fields).validate()
    budget = ObjectBudget(pieces=record["budget_pieces"]).validate()
    problem = refine.build_problem(dataset, hold, budget, record["heldout_fraction"], record["seed"],
                                   progress=progress)
    return problem, RefineConfig(**record["refine"]).validate()


def state_template(run_dir) -> object:
    """A `ppo.TrainState` shaped like the checkpoints of the run in `run_dir`."""
    import jax

    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.rl import ppo, refine

    record = json.loads((pathlib.Path(run_dir) / "run.json").read_text())
    dataset = load_dexgraspnet(record["dataset"], objects=record["objects"]).first_per_object(record["limit"])
    problem, refine_config = _problem(record, dataset)
    env = refine.make_env(problem, refine_config, record["backend"])
    ppo_config = ppo.PPOConfig.from_json(record["ppo"])
    return ppo.init(ppo_config, env, jax.random.PRNGKey(record["seed"]))


def cmd_refine(args: argparse.Namespace) -> int:
    import jax
    import numpy as np
    from tqdm import tqdm

    from diffrl_jax import checkpoint
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet, write_dexgraspnet
    from diffrl_jax.rl import ppo, refine
    from diffrl_jax.sim import robustness
    from diffrl_jax.sim.bank import ObjectBudget
    from diffrl_jax.sim.validate import device_name, entries, validate_dataset

    scenario, hold, ppo_config, refine_config, backend, preset = _configs(args)
    budget = ObjectBudget(pieces=args.budget_pieces).validate()
    out = pathlib.Path(args.out)
    record = _run_record(args, scenario, hold, ppo_config, refine_config, backend, preset)
    refine.exploration_schedule(record["explore"], refine_config.steps)  # before hours of training
    ckpt_dir = out / "checkpoints"
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise ConfigError(f"{out} is not empty: pass --resume to continue its run, or choose a new --out")
    if args.resume and (out / "run.json").exists():
        previous = json.loads((out / "run.json").read_text())
        if previous != record:
            changed = sorted(k for k in record if previous.get(k) != record[k])
            raise ConfigError(f"--resume: the run in {out} was started with other settings "
                              f"(differs in: {', '.join(changed)})")
    dataset = load_dexgraspnet(args.dir, objects=args.objects).first_per_object(args.limit)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run.json", record)

    t0 = time.perf_counter()
    with tqdm(total=len(entries(dataset)), desc="preparing objects", unit="object",
              file=sys.stderr, disable=None) as bar:
        problem, _ = _problem(record, dataset, progress=bar.update)
    env = refine.make_env(problem, refine_config, backend, nthread=args.threads)
    key = jax.random.PRNGKey(args.seed)
    state = ppo.init(ppo_config, env, key)
    start = 0
    # The newest checkpoint that reads back whole (a damaged newer one is moved aside, with a warning).
    latest = resume_step(ckpt_dir) if args.resume else None
    if latest is not None:
        state, _ = checkpoint.restore(ckpt_dir, state, step=latest)
        start = int(state.iteration)
    # MJX envs and minibatches split over every local device (the C backend
    # runs on host threads, so it stays on one).
    mesh = None
    if backend == "mjx" and jax.local_device_count() > 1:
        from diffrl_jax import parallel

        mesh = parallel.local_mesh()
        state = ppo.shard_state(state, mesh)
    records = read_jsonl(out / "metrics.jsonl", "iteration", start)
    timings = {"prepare_s": time.perf_counter() - t0}

    writer = _TensorBoard(out / "tensorboard", purge_step=start + 1)
    block = record["block"]
    total = ppo_config.num_iterations
    train_s, jit_s = 0.0, 0.0
    with tqdm(total=total, initial=start, desc=f"PPO ({backend})", unit="it", file=sys.stderr,
              disable=None) as bar:
        it = start
        compiled = {}
        while it < total:
            n = min(block, total - it)
            if n not in compiled:
                t = time.perf_counter()
                shardings = {} if mesh is None else {"out_shardings": (
                    ppo.state_shardings(state, mesh), parallel.replicated_sharding(mesh))}
                compiled[n] = jax.jit(ppo.make_block(ppo_config, env, n, mesh), **shardings).lower(state).compile()
                jit_s += time.perf_counter() - t
            t = time.perf_counter()
            state, metrics = compiled[n](state)
            metrics = jax.device_get(metrics)
            train_s += time.perf_counter() - t
            for i in range(n):
                row = {"iteration": it + i + 1, **_scalars(metrics, i)}
                row["env_steps"] = (it + i + 1) * ppo_config.num_envs * ppo_config.unroll_length
                records.append(row)
                writer.add_row(row)
            it += n
            write_jsonl_atomic(out / "metrics.jsonl", records)
            writer.flush()
            checkpoint.save(ckpt_dir, it, state, record)
            bar.update(n)
            last = records[-1]
            bar.set_postfix(success=f"{_number(last.get('env/success')):.2f}",
                            reward=f"{_number(last.get('reward')):.2f}")
    writer.close()
    _plot_learning_curve(records, out / "learning_curve.png")
    timings.update(train_s=train_s, jit_s=jit_s)

    # Adaptation: every grasp (training and held-out) through the trained policy.
    t = time.perf_counter()
    state = jax.device_get(state)  # host copies: the adaptation places its own work
    networks = ppo.make_networks(env.observation_size, env.action_size, ppo_config)
    deterministic = ppo.make_policy(networks, state.params, state.normalizer_params, True)
    stochastic = ppo.make_policy(networks, state.params, state.normalizer_params, False)
    env_all = refine.make_env(problem, refine_config, backend, rows=np.arange(len(dataset)),
                              nthread=args.threads)
    attempts = args.attempts or preset["attempts"]
    explore = record["explore"]
    attempts_fn = refine.make_attempts(env_all, deterministic, stochastic, attempts, explore)
    rounds = args.rounds or 1
    with tqdm(total=len(dataset), desc="adapting", unit="grasp", file=sys.stderr, disable=None) as bar:
        def on_round(round_, rows):
            bar.total += rows
            bar.set_description(f"adapting (round {round_ + 1}: {rows} unfixed failures)")

        adapted = refine.adapt(problem, env_all, attempts_fn, jax.random.fold_in(key, 1 << 20),
                               chunk=preset["chunk"], progress=bar.update, rounds=rounds, on_round=on_round)
    timings["adapt_s"] = time.perf_counter() - t
    write_npz_atomic(out / "adaptation.npz", dict(
        raw_success=adapted.raw_success, success=adapted.success, keep=adapted.keep,
        refined=adapted.refined, heldout=problem.heldout, grasps=adapted.grasps, attempts=adapted.attempts))

    adapted_ds, labels = refine.adapted_dataset(problem, adapted)
    samples = _robustness_samples(args, preset)
    if len(adapted_ds) and samples:
        # How often each kept grasp holds when placed a little off (the
        # diffusion model reproduces grasps only to a few millimetres).
        t = time.perf_counter()
        perturb = robustness.PerturbConfig(samples=samples, seed=args.seed)
        with tqdm(total=len(adapted_ds) * samples, desc="robustness", unit="grasp", file=sys.stderr,
                  disable=None) as bar:
            labels[robustness.LABEL], _ = robustness.robustness(
                    adapted_ds, hold, perturb, backend=backend, budget=budget, nthread=args.threads,
                    progress=bar.update)
        timings["robustness_s"] = time.perf_counter() - t
    revalidated = None
    if len(adapted_ds):
        with staged_directory(out / "adapted") as staging:
            write_dexgraspnet(staging, adapted_ds, mesh_source_root=dataset.root, labels=labels)
        # The adapted dataset as `diffrl validate` sees it: re-read from disk, re-simulated.
        t = time.perf_counter()
        with tqdm(total=len(adapted_ds), desc="re-validating", unit="grasp", file=sys.stderr,
                  disable=None) as bar:
            revalidated, _ = validate_dataset(load_dexgraspnet(out / "adapted"), hold, backend=backend,
                                              budget=budget, nthread=args.threads, progress=bar.update)
        timings["revalidate_s"] = time.perf_counter() - t
    result = refine.summary(problem, adapted, revalidated)
    if robustness.LABEL in labels:
        kept_codes = np.asarray(adapted_ds.object_codes)[adapted_ds.object_index]
        for code, entry in result["objects"].items():
            values = labels[robustness.LABEL][kept_codes == code]
            entry["kept_robustness_mean"] = float(values.mean()) if len(values) else None
    result.update(scenario=scenario, backend=backend, device=device_name(backend),
                  attempts=attempts, rounds=rounds, explore=explore, timings_s=timings,
                  train_env_steps=int(ppo_config.num_iterations * ppo_config.num_envs
                                      * ppo_config.unroll_length))
    write_json_atomic(out / "summary.json", result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_summary(result)
    return 0


def _print_summary(result: dict) -> None:
    header = (f"{'object':<44} {'n':>5} {'raw':>6} {'adapted':>8} {'fixed':>6} {'kept':>6} "
              f"{'held-out':>9}")
    print(header)
    print("-" * len(header))

    def fmt(x, width):
        return f"{x:>{width}.3f}" if x is not None else f"{'-':>{width}}"

    for code, r in result["objects"].items():
        print(f"{code[:44]:<44} {r['n']:>5} {fmt(r['raw_success'], 6)} {fmt(r['adapted_success'], 8)} "
              f"{fmt(r['fixed_fraction'], 6)} {fmt(r['kept_fraction'], 6)} "
              f"{fmt(r['heldout_adapted_success'], 9)}")
    t = result["timings_s"]
    print(f"scenario {result['scenario']}, backend {result['backend']} on {result['device']}; "
          + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))


def add_commands(commands) -> None:
    p = commands.add_parser(
        "refine", help="adapt a grasp dataset to a scenario with PPO",
        description="Train a PPO refiner on DIR's grasps under a scenario, apply it to every "
                    "grasp and write the adapted dataset to OUTDIR/adapted.")
    p.add_argument("dir", help="DexGraspNet-format dataset directory")
    p.add_argument("--out", required=True, help="output directory of the run")
    p.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    p.add_argument("--limit", type=positive_int, help="first N grasps of each object")
    p.add_argument("--scenario", default="default",
                   help=f"target scenario: {', '.join(SCENARIOS)} (default: %(default)s)")
    p.add_argument("--protocol", default="strict", choices=("strict", "dexgraspnet"))
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a protocol field of the scenario, e.g. --set friction=0.5")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--backend", choices=("mjx", "mujoco"), help="default: the preset's")
    p.add_argument("--iterations", type=positive_int, help="PPO iterations (default: the preset's)")
    p.add_argument("--envs", type=positive_int, help="parallel environments (default: the preset's)")
    p.add_argument("--steps", type=positive_int,
                   help="corrections per episode, each after the first from the grasp where the last hold "
                        "test's settle left it (default: the preset's, 3)")
    p.add_argument("--block", type=positive_int,
                   help="PPO iterations per compiled block and checkpoint (default: the preset's)")
    p.add_argument("--attempts", type=positive_int,
                   help="episodes per grasp when adapting (default: the preset's)")
    p.add_argument("--rounds", type=positive_int, metavar="R",
                   help="adaptation rounds: raw failures that no attempt fixed get up to R - 1 more rounds "
                        "of --attempts attempts each, stopping once one holds (default 1)")
    p.add_argument("--explore", type=non_negative_floats, metavar="STD[,STD...]",
                   help="when adapting, Gaussian noise added to the sampled attempts' actions "
                        "(action units, [-1, 1] per component; one value per step, the last repeating, "
                        "default: the preset's, 0.2,0)")
    p.add_argument("--robustness", type=non_negative_int, metavar="K",
                   help="label each kept grasp with the fraction of K perturbed copies that hold "
                        "(0: no label; default: the preset's, 16)")
    p.add_argument("--ppo", action="append", metavar="FIELD=VALUE", help="override a PPOConfig field")
    p.add_argument("--refine", action="append", metavar="FIELD=VALUE",
                   help="override a RefineConfig field (bounds, reward scales)")
    p.add_argument("--heldout", type=float, default=0.2, help="held-out fraction per object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, help="MuJoCo C threads (default: all CPUs)")
    p.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_refine)

