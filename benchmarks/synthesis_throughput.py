"""Grasp synthesis speed: one energy-and-gradient evaluation, and optimiser steps per second.

Prints, per shared DexGraspNet object (at scale 0.1, as simulated: its
capped convex pieces), the piece / plane / triangle counts, the milliseconds
of one batched energy gradient (the cost of a step), the optimiser's
steps/s over one `run` chunk and the grasps/s that implies at the default
6000 steps. JIT time is printed apart and excluded.

    python benchmarks/synthesis_throughput.py --batch 64 --chunk 20
"""

from __future__ import annotations

import argparse
import pathlib
import time

from diffrl_jax import runtime

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dexgraspnet"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    runtime.configure()

    import jax
    import jax.numpy as jnp

    from diffrl_jax.synthesis import optimize
    from diffrl_jax.workflows import synthesize as workflow

    objects = workflow.mesh_objects(args.data, scales=[args.scale])
    sdfs = workflow._padded_sdfs(objects, optimize.SynthesisConfig().surface_points)
    config = optimize.SynthesisConfig(steps=args.chunk)
    synth = optimize.make_synthesizer(config, args.batch, args.chunk)
    grad = jax.jit(jax.grad(lambda sdf, g, c: jnp.sum(synth.energy(sdf, g, c)[0]), argnums=1))
    print(f"device {jax.devices()[0].device_kind}  batch {args.batch}  chunk {args.chunk}")
    for obj, sdf in zip(objects, sdfs):
        points, normals = optimize.hull_samples(obj.pieces, 4096)
        state = synth.init(jax.random.key(0), sdf, jnp.asarray(points, jnp.float32),
                           jnp.asarray(normals, jnp.float32))
        t = time.perf_counter()
        jax.block_until_ready(grad(sdf, state.grasps, state.contacts))
        grad_jit = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.repeats):
            jax.block_until_ready(grad(sdf, state.grasps, state.contacts))
        grad_ms = 1e3 * (time.perf_counter() - t) / args.repeats
        t = time.perf_counter()
        state = jax.block_until_ready(synth.run(jax.random.key(1), sdf, state, 0))
        run_jit = time.perf_counter() - t
        t = time.perf_counter()
        for r in range(args.repeats):
            state = jax.block_until_ready(synth.run(jax.random.key(2 + r), sdf, state, (r + 1) * args.chunk))
        steps_per_s = args.repeats * args.chunk / (time.perf_counter() - t)
        grasps_per_s = steps_per_s * args.batch / 6000
        print(f"{obj.code[:24]:24s} pieces {len(obj.pieces):2d} planes {sdf.planes.shape[1]:3d} "
              f"triangles {sdf.triangles.shape[1]:3d}  gradient {grad_ms:7.1f} ms  steps/s {steps_per_s:6.2f}  "
              f"grasps/s at 6000 steps {grasps_per_s:5.3f}  (jit {grad_jit:.0f} s + {run_jit:.0f} s)")


if __name__ == "__main__":
    main()
