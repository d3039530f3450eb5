"""Scenario sweep: raw vs adapted success across frictions and object masses.

    python experiments/scenario_sweep.py DATASET --out DIR [--frictions 0.5,1.0] [--mass-scales 1,2]

For every (friction, mass scale) of the grid, a scenario (the hold protocol
with those two fields set):

- raw success: the dataset's grasps under the scenario's protocol, as
  `diffrl validate` measures it (`sim.validate.validate_dataset`);
- adaptation: `diffrl refine` run in this process into DIR/<scenario>/
  (its own files, checkpoints and `--resume`), then its summary:
  adapted success (the adapted dataset re-read and re-validated), kept
  fraction (the share of grasps that hold after adaptation, corrected or
  not), fixed fraction (of raw failures) and held-out figures.

A rerun skips the scenarios whose summary.json exists and resumes one that
was cut off; the grid may grow between runs, the other settings may not.
DIR/scenario_sweep.json holds per scenario, per object and their mean over
objects: raw_success, adapted_success, kept_fraction, fixed_fraction,
heldout_adapted_success and timings. It is rewritten after every scenario.
A markdown table goes to stdout (`--json`: the JSON), DIR/scenario_sweep.png
shows the same as grouped bars.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import pathlib
import sys
import time
from collections.abc import Sequence

from diffrl_jax.cli.common import non_negative_float, parse_assignments, positive_int, run_script
from diffrl_jax.files import save_figure_atomic, write_json_atomic
from diffrl_jax.errors import ConfigError, DataError

RESULT_FILE = "scenario_sweep.json"
PLOT_FILE = "scenario_sweep.png"
RAW_FILE = "raw_validation.json"  # in each scenario's directory
FIGURES = ("raw_success", "adapted_success", "kept_fraction", "fixed_fraction", "heldout_adapted_success")
_GRID_FIELDS = ("friction", "mass_scale")


def _positive_floats(text: str) -> list[float]:
    """argparse type: comma-separated positive numbers, e.g. 0.5,1.0."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scenario_sweep.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="DexGraspNet-format dataset directory")
    parser.add_argument("--out", required=True, help="output directory of the sweep")
    parser.add_argument("--frictions", type=_positive_floats, default=[0.5, 1.0], metavar="F[,F...]",
                        help="sliding frictions (default 0.5,1.0)")
    parser.add_argument("--mass-scales", type=_positive_floats, default=[1.0, 2.0], metavar="M[,M...]",
                        help="object mass multipliers (default 1,2)")
    parser.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    parser.add_argument("--limit", type=positive_int, default=32,
                        help="first N grasps of each object (default 32)")
    parser.add_argument("--iterations", type=positive_int, default=4, help="PPO iterations (default 4)")
    parser.add_argument("--envs", type=positive_int, default=32, help="parallel environments (default 32)")
    parser.add_argument("--attempts", type=positive_int, default=4,
                        help="episodes per grasp when adapting (default 4)")
    parser.add_argument("--explore", type=non_negative_float, default=0.1, metavar="STD",
                        help="exploration noise of the adaptation attempts (diffrl refine --explore; "
                             "default 0.1)")
    parser.add_argument("--block", type=positive_int,
                        help="PPO iterations per compiled block (default: the preset's)")
    parser.add_argument("--backend", default="mujoco", choices=("mujoco", "mjx"),
                        help="simulator of the hold test (default: %(default)s)")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "gpu"), help="diffrl refine's preset")
    parser.add_argument("--protocol", default="strict", choices=("strict", "dexgraspnet"))
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="override another protocol field in every scenario (repeatable)")
    parser.add_argument("--ppo", action="append", metavar="FIELD=VALUE", help="override a PPOConfig field")
    parser.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, help="MuJoCo C threads (default: all CPUs)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def scenario_name(friction: float, mass_scale: float) -> str:
    return f"friction-{friction:g}_mass-{mass_scale:g}"


def _settings(args) -> dict:
    """Everything but the grid that shapes a scenario's result (a rerun must not change it)."""
    return {
        "dataset": str(pathlib.Path(args.dataset).resolve()), "objects": args.objects, "limit": args.limit,
        "iterations": args.iterations, "envs": args.envs, "attempts": args.attempts,
        "explore": args.explore, "block": args.block,
        "backend": args.backend, "preset": args.preset, "protocol": args.protocol,
        "set": parse_assignments(args.set, "--set"), "ppo": parse_assignments(args.ppo, "--ppo"),
        "budget_pieces": args.budget_pieces, "seed": args.seed,
    }


def refine_argv(settings: dict, friction: float, mass_scale: float, out, threads: int | None,
                resume: bool) -> list[str]:
    """The `diffrl refine` command line of one scenario."""
    argv = ["refine", settings["dataset"], "--out", str(out), "--protocol", settings["protocol"],
            "--preset", settings["preset"], "--backend", settings["backend"],
            "--limit", str(settings["limit"]), "--iterations", str(settings["iterations"]),
            "--envs", str(settings["envs"]), "--attempts", str(settings["attempts"]),
            "--explore", repr(float(settings.get("explore", 0.0))),
            "--budget-pieces", str(settings["budget_pieces"]), "--seed", str(settings["seed"]),
            "--set", f"friction={friction!r}", "--set", f"mass_scale={mass_scale!r}"]
    for field, value in settings["set"].items():
        argv += ["--set", f"{field}={value}"]
    for field, value in settings["ppo"].items():
        argv += ["--ppo", f"{field}={value}"]
    if settings["objects"]:
        argv += ["--objects", *settings["objects"]]
    if settings["block"] is not None:
        argv += ["--block", str(settings["block"])]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return argv + (["--resume"] if resume else [])


def _refine(argv: list[str]) -> None:
    """`diffrl refine` in this process; its printed summary goes to stderr with the progress."""
    from diffrl_jax.cli.common import run_command
    from diffrl_jax.cli.main import build_parser as diffrl_parser

    args = diffrl_parser().parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        run_command(args)  # its lock is covered by the sweep's on --out


def _raw_validation(run_dir: pathlib.Path, settings: dict, threads: int | None) -> dict:
    """The dataset's hold test under the protocol of the refine run in `run_dir` (its run.json)."""
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.sim.bank import ObjectBudget
    from diffrl_jax.sim.protocol import HoldProtocol
    from diffrl_jax.sim.validate import entries, validate_dataset
    from tqdm import tqdm

    record = json.loads((run_dir / "run.json").read_text())
    hold = HoldProtocol.from_json(record["protocol"])
    dataset = load_dexgraspnet(settings["dataset"], objects=settings["objects"])
    start = time.perf_counter()
    total = sum(len(e.rows) for e in entries(dataset, settings["limit"]))
    with tqdm(total=total, desc=f"raw hold test ({settings['backend']})", unit="grasp", file=sys.stderr,
              disable=None) as bar:
        report, _ = validate_dataset(dataset, hold.validate(), backend=settings["backend"],
                                     budget=ObjectBudget(pieces=settings["budget_pieces"]).validate(),
                                     limit=settings["limit"], nthread=threads, progress=bar.update)
    report["wall_s"] = time.perf_counter() - start
    return report


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def scenario_result(friction: float, mass_scale: float, raw: dict, summary: dict) -> dict:
    """One scenario's figures per object and their mean over objects."""
    objects = {}
    for code, r in summary["objects"].items():
        objects[code] = {"n": r["n"], "raw_success": raw["objects"][code]["success_rate"],
                         "raw_success_refine_env": r["raw_success"],
                         **{name: r[name] for name in FIGURES[1:]}}
    mean = {name: _mean([o[name] for o in objects.values()])
            for name in ("raw_success", "raw_success_refine_env", *FIGURES[1:])}
    timings = {"raw_validate_s": raw["wall_s"], **summary.get("timings_s", {})}
    return {"name": scenario_name(friction, mass_scale), "friction": friction, "mass_scale": mass_scale,
            "objects": objects, "mean": mean, "timings_s": timings,
            "train_env_steps": summary.get("train_env_steps"), "device": summary.get("device")}


def _run_scenario(out: pathlib.Path, settings: dict, friction: float, mass_scale: float,
                  threads: int | None) -> tuple[dict, bool]:
    """Refines (or reuses) one scenario; returns its result and whether it was reused."""
    run_dir = out / scenario_name(friction, mass_scale)
    reused = (run_dir / "summary.json").is_file()
    if not reused:
        start = time.perf_counter()
        resume = run_dir.is_dir() and any(run_dir.iterdir())
        print(f"scenario {run_dir.name}: {'resuming' if resume else 'running'} diffrl refine",
              file=sys.stderr)
        _refine(refine_argv(settings, friction, mass_scale, run_dir, threads, resume))
        refine_wall_s = time.perf_counter() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    if not reused:
        summary.setdefault("timings_s", {})["refine_wall_s"] = refine_wall_s
        write_json_atomic(run_dir / "summary.json", summary)
    if (run_dir / RAW_FILE).is_file():
        raw = json.loads((run_dir / RAW_FILE).read_text())
    else:
        raw = _raw_validation(run_dir, settings, threads)
        write_json_atomic(run_dir / RAW_FILE, raw)
    return scenario_result(friction, mass_scale, raw, summary), reused


def _check_rerun(path: pathlib.Path, settings: dict) -> None:
    """Refuses an output directory whose earlier sweep had other settings (the grid may differ)."""
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text()).get("settings") or {}
    except (json.JSONDecodeError, AttributeError):
        raise DataError(f"{path} is not a sweep result; remove it or choose another --out") from None
    changed = sorted(k for k in settings if previous.get(k) != settings[k])
    if changed:
        raise ConfigError(f"{path.parent} holds a sweep with other settings (differs in: "
                          f"{', '.join(changed)}); choose another --out")


def _plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scenarios = result["scenarios"]
    bars = (("raw_success", "raw success"), ("kept_fraction", "holds after adaptation (kept)"),
            ("adapted_success", "adapted dataset success (re-validated)"))
    x = np.arange(len(scenarios))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(scenarios) + 2), 4))
    for k, (key, label) in enumerate(bars):
        values = [s["mean"][key] if s["mean"][key] is not None else np.nan for s in scenarios]
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, [f"friction {s['friction']:g}\nmass x{s['mass_scale']:g}" for s in scenarios])
    ax.set_ylim(0, 1.25)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("mean over objects")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", ncol=len(bars))
    ax.set_title("raw vs adapted hold success per scenario")
    fig.tight_layout()
    save_figure_atomic(fig, path)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_tables(result: dict) -> None:
    """Markdown: the mean over objects per scenario, then every object."""
    print("| friction | mass x | raw | adapted | kept | fixed | held-out adapted | refine s |")
    print("|---|---|---|---|---|---|---|---|")
    for s in result["scenarios"]:
        m, t = s["mean"], s["timings_s"]
        print(f"| {s['friction']:g} | {s['mass_scale']:g} | {_cell(m['raw_success'])} | "
              f"{_cell(m['adapted_success'])} | {_cell(m['kept_fraction'])} | {_cell(m['fixed_fraction'])} | "
              f"{_cell(m['heldout_adapted_success'])} | {t.get('refine_wall_s', float('nan')):.0f} |")
    print()
    print("| friction | mass x | object | n | raw | adapted | kept |")
    print("|---|---|---|---|---|---|---|")
    for s in result["scenarios"]:
        for code, o in s["objects"].items():
            cells = " | ".join(_cell(o[k]) for k in ("raw_success", "adapted_success", "kept_fraction"))
            print(f"| {s['friction']:g} | {s['mass_scale']:g} | {code} | {o['n']} | {cells} |")


def run(args: argparse.Namespace) -> dict:
    """The sweep; returns the result written to OUT/scenario_sweep.json."""
    settings = _settings(args)
    grid_set = sorted(set(settings["set"]) & set(_GRID_FIELDS))
    if grid_set:
        raise ConfigError(f"--set {', '.join(grid_set)}: the grid sets these; "
                          "use --frictions / --mass-scales")
    if not pathlib.Path(args.dataset).is_dir():
        raise DataError(f"dataset directory {args.dataset} does not exist")
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    _check_rerun(out / RESULT_FILE, settings)
    out.mkdir(parents=True, exist_ok=True)
    result = {"settings": settings, "frictions": args.frictions, "mass_scales": args.mass_scales,
              "scenarios": []}
    start = time.perf_counter()
    for friction in args.frictions:
        for mass_scale in args.mass_scales:
            scenario, reused = _run_scenario(out, settings, friction, mass_scale, args.threads)
            result["scenarios"].append(dict(scenario, reused=reused))
            write_json_atomic(out / RESULT_FILE, result)  # finished scenarios survive a killed sweep
    result["wall_s"] = time.perf_counter() - start
    write_json_atomic(out / RESULT_FILE, result)
    _plot(result, out / PLOT_FILE)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(argv, build_parser(), run, print_tables)


if __name__ == "__main__":
    sys.exit(main())
