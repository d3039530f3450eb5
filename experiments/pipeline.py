"""The DiffusionRL pipeline, end to end: raw grasps -> validate -> refine -> train -> sample -> evaluate.

    python experiments/pipeline.py --preset quick --out runs/quick
    diffrl pipeline --preset paper --dataset ../shared/data/dexgraspnet --out runs/paper

The script entry of `diffrl_jax.workflows.pipeline.run_pipeline` (the stages,
the run directory, resuming, the report); its flags and printing are
`diffrl_jax.cli.pipeline`'s, shared with `diffrl pipeline`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from diffrl_jax.cli.pipeline import add_arguments, run_from_args
from diffrl_jax.errors import DiffrlError
from diffrl_jax.workflows.pipeline import PRESETS, RATE_KEYS, STAGES, PipelineConfig, config_from, run_pipeline

__all__ = ["PRESETS", "RATE_KEYS", "STAGES", "PipelineConfig", "add_arguments", "config_from", "main",
           "run_from_args", "run_pipeline"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--compile-cache", metavar="DIR", help="JAX compilation cache directory")
    args = parser.parse_args(argv)
    from diffrl_jax import runtime

    runtime.configure(args.compile_cache)
    try:
        return run_from_args(args)
    except DiffrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
