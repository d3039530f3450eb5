"""Throughput of DexGraspNet loading and `diffrl data check` (CPU, MuJoCo C engine).

    python benchmarks/data_check.py [DIR]

Prints load time, check time and grasps per second. DIR defaults to the
shared sample beside the repository.
"""

import pathlib
import platform
import sys
import time

from diffrl_jax.data.dexgraspnet import load_dexgraspnet
from diffrl_jax.evaluation.check import check_dataset


def main() -> None:
    default = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "dexgraspnet"
    root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default
    t0 = time.perf_counter()
    dataset = load_dexgraspnet(root)
    t1 = time.perf_counter()
    check_dataset(dataset)
    t2 = time.perf_counter()
    n = len(dataset)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"dataset: {root} ({len(dataset.object_codes)} objects, {n} grasps)")
    print(f"load:  {t1 - t0:.3f} s ({n / (t1 - t0):,.0f} grasps/s)")
    print(f"check: {t2 - t1:.3f} s ({n / (t2 - t1):,.0f} grasps/s)")


if __name__ == "__main__":
    main()
