"""The refine workflow: PPO adapts a grasp dataset to a scenario, into an output directory.

`run_refine(config, out)` owns the run's files; the environment, PPO and
adaptation are the library's pure functions. OUT holds:

    run.json            everything needed to rebuild the run (configs, dataset, scenario)
    checkpoints/<it>/   orbax: params, optimizer state, normaliser, env state, key, step
    metrics.jsonl       one line per PPO iteration
    tensorboard/        the same metrics as TensorBoard scalars (best effort: a full disk stops them)
    learning_curve.png  success and reward against environment steps
    adapted/            the adapted dataset (DexGraspNet format, with labels
                        success, refined, heldout, source_index)
    adaptation.npz      per raw grasp: raw_success, success, keep, refined, heldout, attempts
    summary.json        the per-object figures (the function's return value)

Training runs in blocks of iterations (one compiled `lax.scan` each) with a
checkpoint after every block; `resume` continues from the last one, so a
killed run ends where an uninterrupted one would. Not jittable: this is the
host-side loop (progress, checkpoints, files) around the compiled blocks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from diffrl_jax.errors import ConfigError
from diffrl_jax.files import (read_jsonl, save_figure_atomic, staged_directory, write_json_atomic,
                              write_jsonl_atomic, write_npz_atomic)
from diffrl_jax.workflows.presets import REFINE_PRESETS, SCENARIOS, explore_values
from diffrl_jax.workflows.progress import no_bars, warn_stderr


@dataclasses.dataclass(frozen=True)
class RefineRunConfig:
    """Every setting of a refine run, as a user gives it; None: the preset's.

    The overrides are typed field values (e.g. `overrides.parse_overrides`
    of `--set` text): `hold` of the `HoldProtocol` (after the scenario's),
    `ppo` of the `PPOConfig`, `refine` of the `RefineConfig`.
    """

    dataset: str  # a DexGraspNet-format directory
    objects: tuple[str, ...] | None = None  # only these object codes
    limit: int | None = None  # first N grasps of each object
    scenario: str = "default"  # one of `presets.SCENARIOS`
    protocol: str = "strict"
    hold: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    preset: str = "cpu"  # one of `presets.REFINE_PRESETS`
    backend: str | None = None
    iterations: int | None = None
    envs: int | None = None
    steps: int | None = None  # corrections per episode
    block: int | None = None  # PPO iterations per compiled block and checkpoint
    attempts: int | None = None  # episodes per grasp when adapting
    rounds: int | None = None  # adaptation rounds (None: 1)
    explore: float | tuple[float, ...] | None = None  # exploration std, or one per step
    robustness: int | None = None  # perturbed copies per kept grasp (0: no label)
    ppo: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    refine: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    heldout: float = 0.2  # held-out fraction per object
    seed: int = 0
    threads: int | None = None  # MuJoCo C threads (None: all CPUs)
    budget_pieces: int = 32
    resume: bool = False  # continue the run in `out`


@dataclasses.dataclass(frozen=True)
class ResolvedRefine:
    """A `RefineRunConfig` with its preset applied: the configs the run is built from."""

    scenario: str
    hold: Any  # HoldProtocol
    ppo: Any  # ppo.PPOConfig
    refine: Any  # RefineConfig
    backend: str
    preset: dict


def scenario_overrides(name: str) -> dict:
    """The hold-protocol overrides of scenario `name`."""
    if name not in SCENARIOS:
        raise ConfigError(f"unknown scenario {name!r}; choose one of {sorted(SCENARIOS)}")
    return dict(SCENARIOS[name])


def resolve(config: RefineRunConfig) -> ResolvedRefine:
    """The protocol, PPO and refine configs of a run: the preset's, then the config's overrides."""
    from diffrl_jax.rl import ppo
    from diffrl_jax.rl.refine_env import RefineConfig
    from diffrl_jax.sim.protocol import protocol

    if config.preset not in REFINE_PRESETS:
        raise ConfigError(f"unknown preset {config.preset!r}; choose one of {sorted(REFINE_PRESETS)}")
    preset = REFINE_PRESETS[config.preset]
    overrides = scenario_overrides(config.scenario)
    overrides.update(config.hold)
    hold = protocol(config.protocol, **overrides)
    ppo_overrides = dict(preset["ppo"])
    ppo_overrides.update(config.ppo)
    if config.iterations is not None:
        ppo_overrides["num_iterations"] = config.iterations
    if config.envs is not None:
        ppo_overrides["num_envs"] = config.envs
    refine_overrides = dict(config.refine)
    if config.steps is not None:
        refine_overrides["steps"] = config.steps
    refine_overrides.setdefault("steps", preset["steps"])
    refine_config = RefineConfig().replace(**refine_overrides)
    ppo_overrides.setdefault("episode_length", refine_config.steps)
    ppo_config = ppo.PPOConfig().replace(**ppo_overrides).validate()
    backend = config.backend or preset["backend"]
    return ResolvedRefine(config.scenario, hold, ppo_config, refine_config, backend, preset)


def robustness_samples(config: RefineRunConfig, preset: dict) -> int:
    return preset["robustness"] if config.robustness is None else config.robustness


def run_record(config: RefineRunConfig, resolved: ResolvedRefine) -> dict:
    """run.json: everything needed to rebuild the run (compared whole on resume)."""
    from diffrl_jax.sim.validate import protocol_json

    preset = resolved.preset
    return {
        "dataset": str(pathlib.Path(config.dataset).resolve()),
        "objects": None if config.objects is None else list(config.objects), "limit": config.limit,
        "scenario": resolved.scenario, "protocol": protocol_json(resolved.hold),
        "ppo": resolved.ppo.to_json(), "refine": resolved.refine.to_json(),
        "backend": resolved.backend, "preset": config.preset, "seed": config.seed,
        "heldout_fraction": config.heldout, "budget_pieces": config.budget_pieces,
        "block": config.block or preset["block"], "attempts": config.attempts or preset["attempts"],
        "explore": explore_values(config.explore, preset, resolved.refine.steps),
        "robustness": robustness_samples(config, preset),
        # Recorded only when used, so runs from before rounds still resume.
        **({"rounds": config.rounds} if (config.rounds or 1) > 1 else {}),
    }


def _number(value) -> float:
    """A metric as a float: NaN for a missing one or a null read back from metrics.jsonl."""
    return float("nan") if value is None else float(value)


def plot_learning_curve(records: list[dict], path: pathlib.Path) -> None:
    """learning_curve.png: success and reward of metrics.jsonl's rows against environment steps."""
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


class TensorBoardLog:
    """The metrics as TensorBoard scalars under OUT/tensorboard: best effort.

    A copy of metrics.jsonl (which is written atomically and is what a
    resumed run reads) for viewing while a run trains. tensorboardX appends
    from a background thread, so a refused write (a full disk) cannot be an
    `OutputError` of the run: it stops the copy with one warning, and the
    queue is unbounded so that a writer thread that died never blocks the run.
    """

    def __init__(self, logdir: pathlib.Path, purge_step: int, warn: Callable[[str], None] = warn_stderr):
        self._writer = None
        self._warn = warn
        try:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(logdir), purge_step=purge_step, max_queue=1 << 20)
        except OSError as e:
            self._stop(e)

    def _stop(self, e: OSError) -> None:
        self._warn(f"warning: TensorBoard events stopped ({e.strerror or e}); metrics.jsonl has every metric")
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
    """The problem and refine config of a run record (see `run_record`)."""
    from diffrl_jax.rl import refine
    from diffrl_jax.rl.refine_env import RefineConfig
    from diffrl_jax.sim.bank import ObjectBudget
    from diffrl_jax.sim.protocol import HoldProtocol

    hold = HoldProtocol.from_json(record["protocol"])  # nested, or flat in runs written before
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


def _check_resumable(out: pathlib.Path, record: dict, resume: bool) -> None:
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"{out} is not empty: pass --resume to continue its run, or choose a new --out")
    if resume and (out / "run.json").exists():
        previous = json.loads((out / "run.json").read_text())
        if "protocol" in previous:  # flat in runs written before protocols nested their physics
            from diffrl_jax.sim.protocol import HoldProtocol
            from diffrl_jax.sim.validate import protocol_json

            previous["protocol"] = protocol_json(HoldProtocol.from_json(previous["protocol"]))
        if previous != record:
            changed = sorted(k for k in record if previous.get(k) != record[k])
            raise ConfigError(f"--resume: the run in {out} was started with other settings "
                              f"(differs in: {', '.join(changed)})")


def run_refine(config: RefineRunConfig, out, *,
               progress_fn: Callable[[int, dict], None] = lambda *args: None,
               bars: Callable[..., Any] = no_bars,
               warn: Callable[[str], None] = warn_stderr) -> dict:
    """Trains the refiner, adapts every grasp, writes OUT (see the module docstring); the summary.

    `progress_fn(iteration, metrics)`: after each compiled block, the last
    iteration's metrics row (as metrics.jsonl has it). `bars(desc, total,
    unit, initial=0)`: a context manager of a progress bar (`progress.Bar`) for each
    phase (preparing objects, PPO, adapting, robustness, re-validating).
    `warn(message)`: damaged checkpoints skipped, TensorBoard events stopped.
    User errors are `DiffrlError`s raised before anything is written.
    """
    import jax
    import numpy as np

    from diffrl_jax import checkpoint
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet, write_dexgraspnet
    from diffrl_jax.rl import ppo, refine
    from diffrl_jax.sim import robustness
    from diffrl_jax.sim.bank import ObjectBudget
    from diffrl_jax.sim.validate import device_name, entries, validate_dataset

    resolved = resolve(config)
    hold, ppo_config, refine_config, backend, preset = (resolved.hold, resolved.ppo, resolved.refine,
                                                        resolved.backend, resolved.preset)
    budget = ObjectBudget(pieces=config.budget_pieces).validate()
    out = pathlib.Path(out)
    record = run_record(config, resolved)
    refine.exploration_schedule(record["explore"], refine_config.steps)  # before hours of training
    ckpt_dir = out / "checkpoints"
    _check_resumable(out, record, config.resume)
    objects = None if config.objects is None else list(config.objects)
    dataset = load_dexgraspnet(config.dataset, objects=objects).first_per_object(config.limit)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run.json", record)

    t0 = time.perf_counter()
    with bars("preparing objects", len(entries(dataset)), "object") as bar:
        problem, _ = _problem(record, dataset, progress=bar.update)
    env = refine.make_env(problem, refine_config, backend, nthread=config.threads)
    key = jax.random.PRNGKey(config.seed)
    state = ppo.init(ppo_config, env, key)
    start = 0
    # The newest checkpoint that reads back whole (a damaged newer one is moved aside, with a warning).
    latest = checkpoint.resume_step(ckpt_dir, warn=warn) if config.resume else None
    if latest is not None:
        state, _ = checkpoint.restore(ckpt_dir, state, step=latest)
        start = int(state.iteration)
    # MJX envs and minibatches split over every local device (the C backend
    # runs on host threads, so it stays on one).
    mesh = None
    from diffrl_jax.sim import backends

    if backends.get(backend).shards_over_devices and jax.local_device_count() > 1:
        from diffrl_jax import parallel

        mesh = parallel.local_mesh()
        state = ppo.shard_state(state, mesh)
    records = read_jsonl(out / "metrics.jsonl", "iteration", start)
    timings = {"prepare_s": time.perf_counter() - t0}

    writer = TensorBoardLog(out / "tensorboard", purge_step=start + 1, warn=warn)
    block = record["block"]
    total = ppo_config.num_iterations
    train_s, jit_s = 0.0, 0.0
    with bars(f"PPO ({backend})", total, "it", initial=start) as bar:
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
            progress_fn(it, records[-1])
    writer.close()
    plot_learning_curve(records, out / "learning_curve.png")
    timings.update(train_s=train_s, jit_s=jit_s)

    # Adaptation: every grasp (training and held-out) through the trained policy.
    t = time.perf_counter()
    state = jax.device_get(state)  # host copies: the adaptation places its own work
    networks = ppo.make_networks(env.observation_size, env.action_size, ppo_config)
    deterministic = ppo.make_policy(networks, state.params, state.normalizer_params, True)
    stochastic = ppo.make_policy(networks, state.params, state.normalizer_params, False)
    env_all = refine.make_env(problem, refine_config, backend, rows=np.arange(len(dataset)),
                              nthread=config.threads)
    attempts = record["attempts"]
    explore = record["explore"]
    attempts_fn = refine.make_attempts(env_all, deterministic, stochastic, attempts, explore)
    rounds = config.rounds or 1
    with bars("adapting", len(dataset), "grasp") as bar:
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
    samples = record["robustness"]
    if len(adapted_ds) and samples:
        # How often each kept grasp holds when placed a little off (the
        # diffusion model reproduces grasps only to a few millimetres).
        t = time.perf_counter()
        perturb = robustness.PerturbConfig(samples=samples, seed=config.seed)
        with bars("robustness", len(adapted_ds) * samples, "grasp") as bar:
            labels[robustness.LABEL], _ = robustness.robustness(
                    adapted_ds, hold, perturb, backend=backend, budget=budget, nthread=config.threads,
                    progress=bar.update)
        timings["robustness_s"] = time.perf_counter() - t
    revalidated = None
    if len(adapted_ds):
        with staged_directory(out / "adapted") as staging:
            write_dexgraspnet(staging, adapted_ds, mesh_source_root=dataset.root, labels=labels)
        # The adapted dataset as `diffrl validate` sees it: re-read from disk, re-simulated.
        t = time.perf_counter()
        with bars("re-validating", len(adapted_ds), "grasp") as bar:
            revalidated, _ = validate_dataset(load_dexgraspnet(out / "adapted"), hold, backend=backend,
                                              budget=budget, nthread=config.threads, progress=bar.update)
        timings["revalidate_s"] = time.perf_counter() - t
    result = refine.summary(problem, adapted, revalidated)
    if robustness.LABEL in labels:
        kept_codes = np.asarray(adapted_ds.object_codes)[adapted_ds.object_index]
        for code, entry in result["objects"].items():
            values = labels[robustness.LABEL][kept_codes == code]
            entry["kept_robustness_mean"] = float(values.mean()) if len(values) else None
    result.update(scenario=resolved.scenario, backend=backend, device=device_name(backend),
                  attempts=attempts, rounds=rounds, explore=explore, timings_s=timings,
                  train_env_steps=int(ppo_config.num_iterations * ppo_config.num_envs
                                      * ppo_config.unroll_length))
    write_json_atomic(out / "summary.json", result)
    return result


def summary_table(result: dict) -> list[str]:
    """The summary as the lines of a table (what `diffrl refine` prints without --json)."""
    header = (f"{'object':<44} {'n':>5} {'raw':>6} {'adapted':>8} {'fixed':>6} {'kept':>6} "
              f"{'held-out':>9}")
    lines = [header, "-" * len(header)]

    def fmt(x, width):
        return f"{x:>{width}.3f}" if x is not None else f"{'-':>{width}}"

    for code, r in result["objects"].items():
        lines.append(f"{code[:44]:<44} {r['n']:>5} {fmt(r['raw_success'], 6)} {fmt(r['adapted_success'], 8)} "
                     f"{fmt(r['fixed_fraction'], 6)} {fmt(r['kept_fraction'], 6)} "
                     f"{fmt(r['heldout_adapted_success'], 9)}")
    t = result["timings_s"]
    lines.append(f"scenario {result['scenario']}, backend {result['backend']} on {result['device']}; "
                 + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    return lines
