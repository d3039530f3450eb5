"""`diffrl pipeline` (and experiments/pipeline.py): the shell of `workflows.pipeline.run_pipeline`.

Parses the flags into a `PipelineConfig`, draws progress on stderr, runs
`workflows.pipeline.run_pipeline` and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import sys

from diffrl_jax.cli.common import parse_assignments
from diffrl_jax.workflows.pipeline import PRESETS, STAGES, config_from, run_pipeline, summary_lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="quick: built-in objects on a CPU in minutes; paper: DexGraspNet objects on a GPU")
    p.add_argument("--dataset", metavar="DIR|builtin",
                   help="raw dataset: a DexGraspNet-format directory, or builtin (proposals; quick's default)")
    p.add_argument("--objects", nargs="+", metavar="NAME|CODE",
                   help="built-in object names, or object codes of --dataset DIR")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a pipeline setting, e.g. --set train_steps=500 (repeatable)")
    p.add_argument("--stop-after", choices=STAGES[:-1], help="stop after this stage (a rerun continues)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (a rerun resumes it)")
    p.add_argument("--json", action="store_true", help="print summary.json")


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the pipeline of parsed arguments."""
    from diffrl_jax.workflows.progress import TqdmBars

    config = config_from(args.preset, args.dataset, args.objects, parse_assignments(args.set, "--set"))

    def on_stage(stage, what):
        print(f"[pipeline] {stage}: {what}", file=sys.stderr, flush=True)

    summary = run_pipeline(args.out, config, stop_after=args.stop_after, on_stage=on_stage, bars=TqdmBars())
    if summary is None:
        print(f"stopped after {args.stop_after}; rerun the same command to continue", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(summary_lines(summary, args.out)))
    return 0
