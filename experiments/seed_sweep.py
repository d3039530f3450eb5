"""Seed sweep: S diffusion models trained at once (`vmap` over seeds); mean and spread.

    python experiments/seed_sweep.py DATASET --out DIR [--seeds 4] [--steps 2000] [--batch 256]

Every seed trains the same model on the same data (`diffrl train`'s: the
grasps labelled success when the dataset has that label) with its own
initialisation, minibatches and sampling noise, all seeds in one compiled
program (`diffrl_jax.diffusion.seeds`). Per seed it reports the final loss
and the quality of `--samples` grasps sampled (EMA weights, DDIM) for every
(object, scale) of the data:

- coverage / precision / nearest wrist distance against that condition's
  training grasps, and the samples' diversity (`diffusion.metrics`), each
  averaged over conditions;
- the hold-test success of the first `--hold-samples` of them per condition
  (`sim.validate`, MuJoCo C by default; `--no-validate` skips it): the
  hold test costs far more than sampling.

It prints one row per seed and the mean, standard deviation (ddof 1), min
and max over seeds (`--json`: one JSON object), and writes
DIR/seed_sweep.json and DIR/loss_curves.png.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Sequence

from diffrl_jax.cli.common import parse_assignments, positive_int, run_script
from diffrl_jax.files import save_figure_atomic, write_json_atomic
from diffrl_jax.errors import ConfigError, DataError

RESULT_FILE = "seed_sweep.json"
LOSS_PLOT = "loss_curves.png"
# Per-seed figures summarised over seeds, in table order.
FIGURES = ("final_loss", "coverage", "precision", "nearest_translation_m", "diversity_translation_m",
           "diversity_rotation_rad", "diversity_joints_rms_rad", "hold_success")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seed_sweep.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="DexGraspNet-format dataset directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seeds", type=positive_int, default=4, help="number of seeds (default 4)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST..FIRST+S-1")
    parser.add_argument("--steps", type=positive_int, default=2000, help="optimisation steps (default 2000)")
    parser.add_argument("--batch", type=positive_int, default=256, help="minibatch size (default 256)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="override a DiffusionConfig field, e.g. --set width=128 (repeatable)")
    parser.add_argument("--all-grasps", action="store_true", help="ignore a 'success' label")
    parser.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    parser.add_argument("--samples", type=positive_int, default=256,
                        help="grasps sampled per seed and (object, scale) condition (default 256)")
    parser.add_argument("--hold-samples", type=positive_int, default=16,
                        help="of those, how many are hold-tested (default 16)")
    parser.add_argument("--sampler-steps", type=positive_int, default=10, help="DDIM steps (default 10)")
    parser.add_argument("--no-validate", action="store_true", help="skip the hold test of the samples")
    parser.add_argument("--backend", default="mujoco", choices=("mujoco", "mjx"),
                        help="hold-test simulator (default: %(default)s)")
    parser.add_argument("--protocol", default="strict", choices=("strict", "dexgraspnet"))
    parser.add_argument("--protocol-set", action="append", metavar="FIELD=VALUE",
                        help="override a hold-protocol field, e.g. friction=0.5 (repeatable)")
    parser.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P")
    parser.add_argument("--threads", type=positive_int, help="MuJoCo C threads (default: all CPUs)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def _config(args):
    from diffrl_jax.diffusion.config import DiffusionConfig

    overrides = parse_assignments(args.set, "--set")
    clash = sorted({"num_steps", "batch_size", "seed"} & set(overrides))
    if clash:
        raise ConfigError(f"give {', '.join(clash)} by --steps, --batch and --seeds, not --set")
    overrides.update(num_steps=str(args.steps), batch_size=str(args.batch))
    return DiffusionConfig().with_overrides(overrides)


def _hold_protocol(args):
    from diffrl_jax.sim.protocol import protocol

    overrides = {}
    for name, text in parse_assignments(args.protocol_set, "--protocol-set").items():
        try:
            overrides[name] = json.loads(text)  # numbers and true/false keep their types
        except json.JSONDecodeError:
            raise ConfigError(f"--protocol-set {name}: {text!r} is not a number or true/false") from None
    return protocol(args.protocol, **overrides)


def _sample_quality(samples, reference) -> dict:
    """Metrics of one seed's samples `[M, n, 31]` against `reference[m]`, averaged over conditions."""
    import numpy as np

    from diffrl_jax.diffusion import metrics

    rows = []
    for grasps, ref in zip(samples, reference):
        cover = metrics.coverage(grasps, ref)
        row = {"coverage": cover["coverage"], "precision": cover["precision"],
               "nearest_translation_m": cover["nearest_translation_m"]}
        if len(grasps) > 1:
            spread = metrics.diversity(grasps)
            row.update(diversity_translation_m=spread["translation_m"],
                       diversity_rotation_rad=spread["rotation_rad"],
                       diversity_joints_rms_rad=spread["joints_rms_rad"])
        rows.append(row)
    return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}


def _reference_diversity(reference) -> dict:
    """The training grasps' own diversity, averaged over conditions with two or more grasps."""
    import numpy as np

    from diffrl_jax.diffusion import metrics

    rows = [metrics.diversity(ref) for ref in reference if len(ref) > 1]
    if not rows:
        return {}
    return {f"diversity_{name}": float(np.mean([r[name] for r in rows]))
            for name in ("translation_m", "rotation_rad", "joints_rms_rad")}


def _plot_losses(curves: dict, seeds: list[int], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    losses = np.asarray(curves["loss"])  # [blocks, S]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, seed in enumerate(seeds):
        ax.plot(curves["step"], losses[:, i], label=f"seed {seed}", alpha=0.8)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("diffusion loss (block mean)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"{len(seeds)} seeds trained as one vmapped program")
    fig.tight_layout()
    save_figure_atomic(fig, path)


def _format(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_table(result: dict) -> None:
    shown = [("final_loss", "final loss", 4), ("coverage", "coverage", 3), ("precision", "precision", 3),
             ("nearest_translation_m", "nearest wrist m", 4), ("hold_success", "hold success", 3)]
    print("| seed | " + " | ".join(label for _, label, _ in shown) + " |")
    print("|---" * (len(shown) + 1) + "|")
    for row in result["per_seed"]:
        print(f"| {row['seed']} | " + " | ".join(_format(row.get(k), d) for k, _, d in shown) + " |")
    summary = result["summary"]
    for stat in ("mean", "std", "min", "max"):
        print(f"| {stat} | " + " | ".join(_format(summary[k][stat], d) for k, _, d in shown) + " |")
    t = result["timings_s"]
    print(f"{len(result['seeds'])} seeds x {result['config']['num_steps']} steps at batch "
          f"{result['config']['batch_size']}: {t['train']:.1f} s training "
          f"({_format(result['seed_steps_per_s'], 1)} seed-steps/s after a first block of "
          f"{t['first_block']:.1f} s), "
          f"{t['sample']:.1f} s sampling, {t['validate']:.1f} s hold tests; "
          f"{result['samples_per_seed']} samples per seed over {len(result['conditions'])} condition(s), "
          f"{result['hold_tested_per_seed'] or 0} of them hold-tested")


def run(args: argparse.Namespace) -> dict:
    """The sweep; returns the result written to OUT/seed_sweep.json."""
    import jax
    import numpy as np
    from tqdm import tqdm

    from diffrl_jax.data.dexgraspnet import GraspDataset, load_dexgraspnet
    from diffrl_jax.diffusion import seeds as seeds_lib
    from diffrl_jax.diffusion.model import make_denoiser, model_kwargs
    from diffrl_jax.diffusion.train import TrainData, fit_normaliser, grasp_training_data
    from diffrl_jax.sim.bank import ObjectBudget
    from diffrl_jax.sim.validate import device_name, validate_dataset

    config = _config(args)
    hold = None if args.no_validate else _hold_protocol(args)
    budget = ObjectBudget(pieces=args.budget_pieces).validate()
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    dataset = load_dexgraspnet(args.dataset, objects=args.objects)
    timings = {}
    t = time.perf_counter()
    with tqdm(total=len(dataset.object_codes), desc="encoding objects", unit="object", file=sys.stderr,
              disable=None) as bar:
        samples, conds, cond_index, groups = grasp_training_data(
            dataset, config, False if args.all_grasps else None, progress=bar.update)
    timings["encode"] = time.perf_counter() - t
    kwargs = model_kwargs(config, samples.shape[1], conds.shape[1])
    model = make_denoiser(**kwargs)
    normaliser = fit_normaliser(samples)
    data = TrainData.create(samples, conds, cond_index, normaliser)
    print(f"training {len(seeds)} seeds on {len(samples)} grasps, {len(groups)} (object, scale) "
          f"conditions; model {kwargs}", file=sys.stderr)

    # Training: the host loop over blocks; every block trains all seeds in one call.
    states = seeds_lib.init_seeds(config, model, seeds)
    curves = {"step": [], "loss": [], "grad_norm": []}
    clock = {"last": time.perf_counter(), "first": None}
    t = time.perf_counter()
    with tqdm(total=config.num_steps, desc=f"training {len(seeds)} seeds", unit="step", file=sys.stderr,
              disable=None) as bar:
        def on_block(states, metrics):
            step = int(states.step[0])
            if clock["first"] is None:
                clock["first"] = (time.perf_counter() - clock["last"], step)  # includes compilation
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{metrics['loss'].mean():.4f}")
            curves["step"].append(step)
            curves["loss"].append(metrics["loss"].tolist())
            curves["grad_norm"].append(metrics["grad_norm"].tolist())

        states = seeds_lib.run_seeds(states, data, config, model, on_block=on_block)
        jax.block_until_ready(states)
    timings["train"] = time.perf_counter() - t
    timings["first_block"], first_steps = clock["first"]
    steady_s, steady_steps = timings["train"] - timings["first_block"], config.num_steps - first_steps
    seed_steps_per_s = len(seeds) * steady_steps / steady_s if steady_steps else None

    # Sampling: one compiled call per condition gives every seed's samples.
    t = time.perf_counter()
    sample = seeds_lib.make_seeds_sampler(config, model, args.samples, steps=args.sampler_steps)
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    drawn = np.stack([np.asarray(sample(states.ema_params, normaliser, conds[m], fold(states.key, m)),
                                 np.float64)
                      for m in range(len(groups))], axis=1)  # [S, M, n, 31]
    timings["sample"] = time.perf_counter() - t
    reference = [samples[cond_index == m] for m in range(len(groups))]
    per_seed = [{"seed": seed, "final_loss": curves["loss"][-1][i], **_sample_quality(drawn[i], reference)}
                for i, seed in enumerate(seeds)]

    # The hold test of every sample of every seed, as one dataset (each object prepared once).
    timings["validate"] = 0.0
    if hold is not None:
        codes = list(dataset.object_codes)
        n = min(args.hold_samples, args.samples)
        sampled = GraspDataset(
            grasps=drawn[:, :, :n].reshape(-1, drawn.shape[-1]),
            scales=np.tile(np.repeat([scale for _, scale in groups], n), len(seeds)),
            object_index=np.tile(np.repeat([codes.index(code) for code, _ in groups], n), len(seeds)),
            object_codes=codes, root=dataset.root)
        t = time.perf_counter()
        with tqdm(total=len(sampled), desc=f"hold test ({args.backend})", unit="grasp", file=sys.stderr,
                  disable=None) as bar:
            _, rows = validate_dataset(sampled, hold, backend=args.backend, budget=budget,
                                       nthread=args.threads, progress=bar.update)
        timings["validate"] = time.perf_counter() - t
        success = np.asarray(rows["success"]).reshape(len(seeds), -1)
        for row, held in zip(per_seed, success):
            row["hold_success"] = float(held.mean())

    return {
        "dataset": str(pathlib.Path(args.dataset).resolve()),
        "seeds": seeds,
        "config": config.to_dict(),
        "model": kwargs,
        "num_grasps": int(len(samples)),
        "conditions": [{"object": code, "scale": scale, "n": int((cond_index == m).sum())}
                       for m, (code, scale) in enumerate(groups)],
        "samples_per_seed": int(args.samples * len(groups)),
        "hold_tested_per_seed": (None if hold is None
                                 else int(min(args.hold_samples, args.samples) * len(groups))),
        "sampler": {"method": "ddim", "steps": args.sampler_steps, "params": "ema"},
        "hold_test": None if hold is None else {
            "backend": args.backend, "device": device_name(args.backend), "protocol": hold.name,
            "overrides": parse_assignments(args.protocol_set, "--protocol-set"),
            "budget_pieces": args.budget_pieces},
        "per_seed": per_seed,
        "summary": {name: seeds_lib.spread([row.get(name) for row in per_seed]) for name in FIGURES},
        "reference": _reference_diversity(reference),
        "curves": curves,
        "seed_steps_per_s": seed_steps_per_s,
        "timings_s": timings,
        "device": f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})",
    }


def _save(args: argparse.Namespace, result: dict) -> None:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RESULT_FILE, result)
    _plot_losses(result["curves"], result["seeds"], out / LOSS_PLOT)


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(argv, build_parser(), run, _print_table, _save)


if __name__ == "__main__":
    sys.exit(main())
