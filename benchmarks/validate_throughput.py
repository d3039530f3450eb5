"""Hold-test throughput against batch size, for the MJX and MuJoCo-C backends.

Prints one line per (backend, batch): grasps/s and physics steps/s (run time,
JIT apart), JIT seconds, peak host memory and the device. The scene is the
DexGraspNet bottle at its first scale (or the built-in bottle without shared
data); grasps are the dataset's own, repeated to fill the batch.

    python benchmarks/validate_throughput.py --backend mjx --groups 1 2 4 --group-size 8
    python benchmarks/validate_throughput.py --backend mujoco --batch 16 64 --threads 2
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import time

import numpy as np

from diffrl_jax import runtime

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dexgraspnet"
BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(budget):
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.objects import assets
    from diffrl_jax.sim import bank

    data = load_dexgraspnet(SHARED, objects=[BOTTLE]).for_object(BOTTLE)
    scale = data.scales[0]
    grasps = data.grasps[data.scales == scale]
    obj = assets.mesh_object(data.mesh_path(BOTTLE), scale)
    return bank.prepare_object(obj, budget), grasps


def bench_mjx(args, template, prepared, grasps):
    import jax

    from diffrl_jax.sim import bank, hold

    fn = hold.make_hold_test(template)
    for groups in args.groups:
        n = args.group_size
        fields = bank.stack_fields([template.fields(prepared)] * groups)
        g = np.resize(grasps, (groups, n, grasps.shape[-1])).astype(np.float32)
        t = time.perf_counter()
        compiled = fn.lower(fields, g).compile()
        jit_s = time.perf_counter() - t
        jax.block_until_ready(compiled(fields, g))  # warm-up run
        t = time.perf_counter()
        jax.block_until_ready(compiled(fields, g))
        run_s = time.perf_counter() - t
        _report("mjx", groups * n, run_s, jit_s, template.protocol, jax.devices()[0].device_kind)


def bench_mujoco(args, template, prepared, grasps):
    from diffrl_jax.sim import mujoco_backend

    mujoco_backend.hold_test_mujoco(template, prepared, grasps[:1], nthread=args.threads)  # JAX targets compile
    for batch in args.batch:
        g = np.resize(grasps, (batch, grasps.shape[-1]))
        t = time.perf_counter()
        mujoco_backend.hold_test_mujoco(template, prepared, g, nthread=args.threads)
        run_s = time.perf_counter() - t
        _report("mujoco", batch, run_s, 0.0, template.protocol, f"cpu x{args.threads or 'all'}")


def _report(backend, batch, run_s, jit_s, protocol, device):
    steps = batch * protocol.total_steps
    print(f"{backend:>6} batch {batch:>6}: {batch / run_s:9.2f} grasps/s {steps / run_s:11.0f} steps/s "
          f"run {run_s:7.2f} s jit {jit_s:6.1f} s peak {_peak_mb():7.0f} MB device {device}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("mjx", "mujoco"), default="mujoco")
    parser.add_argument("--protocol", default="strict")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--pieces", type=int, default=8)
    args = parser.parse_args()
    runtime.configure()
    from diffrl_jax.sim import bank, protocol

    template = bank.make_template(protocol.protocol(args.protocol), bank.ObjectBudget(pieces=args.pieces))
    prepared, grasps = load(template.budget)
    print(f"object {BOTTLE} pieces {len(prepared.pieces)} protocol {args.protocol} "
          f"({template.protocol.total_steps} physics steps per grasp)")
    (bench_mjx if args.backend == "mjx" else bench_mujoco)(args, template, prepared, grasps)


if __name__ == "__main__":
    main()
