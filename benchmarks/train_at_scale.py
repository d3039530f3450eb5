"""Diffusion training at dataset scale: encoding cost per object, training steps/s and memory against size.

`diffrl train` encodes each (object, scale) once and a minibatch gathers
its conditions by index, so a step costs the same for 3 objects as for
5355. This prints:

1. the shape-encoding time per object (5 scales, as DexGraspNet has) on
   objects of the generated library (`diffrl data library`), and the time
   that implies for DexGraspNet's 5355 objects;
2. training steps/s and the training arrays' bytes for datasets of N grasps
   and M (object, scale) conditions, up to DexGraspNet's 1.32M grasps and
   5355 x 5 conditions. The arrays are random of the real shapes: step time
   does not depend on their values.

    python benchmarks/train_at_scale.py --objects 40 --grasps 10000 100000 1320000 --conds 1000 26775
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np

from diffrl_jax import runtime

DEXGRASPNET_OBJECTS, DEXGRASPNET_GRASPS = 5355, 1_320_000


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=40, help="library objects to encode")
    parser.add_argument("--grasps", type=int, nargs="+", default=[10_000, 100_000, DEXGRASPNET_GRASPS])
    parser.add_argument("--conds", type=int, nargs="+", default=[1000, DEXGRASPNET_OBJECTS * 5])
    parser.add_argument("--steps", type=int, default=300, help="timed training steps per size")
    args = parser.parse_args(argv)
    runtime.configure()

    import jax

    from diffrl_jax.data import dexgraspnet
    from diffrl_jax.diffusion.config import DiffusionConfig
    from diffrl_jax.diffusion.model import make_denoiser, model_kwargs
    from diffrl_jax.diffusion.train import TrainData, fit_normaliser, init_train_state, make_train_block
    from diffrl_jax.objects import encoding, library

    config = DiffusionConfig()
    basis = encoding.bps_basis(config.encoding_points, config.encoding_radius)
    scales = [0.06, 0.08, 0.1, 0.12, 0.15]
    with tempfile.TemporaryDirectory() as tmp:
        objects = library.generate_library(args.objects)
        library.write_library(objects, tmp)
        start = time.perf_counter()
        for obj in objects:
            encoding.encode_mesh_scales(dexgraspnet.mesh_path(tmp, obj.code), scales, basis=basis,
                                        num_samples=config.encoding_samples)
        per_object = (time.perf_counter() - start) / len(objects)
    print(f"encoding: {1e3 * per_object:.1f} ms per object (5 scales, {config.encoding_samples} surface samples, "
          f"{len(basis)} basis points) over {len(objects)} library objects; DexGraspNet's "
          f"{DEXGRASPNET_OBJECTS} objects: {per_object * DEXGRASPNET_OBJECTS / 60:.1f} min on one core")

    rng = np.random.default_rng(0)
    cond_dim = encoding.encoding_dim(basis)
    model = make_denoiser(**model_kwargs(config, 31, cond_dim))
    block = make_train_block(config, model, steps=args.steps)
    print(f"training: batch {config.batch_size}, model width {config.width} depth {config.depth}, "
          f"device {jax.devices()[0].device_kind}")
    for m in args.conds:
        for n in args.grasps:
            samples = rng.normal(size=(n, 31)).astype(np.float32)
            data = TrainData.create(samples, rng.normal(size=(m, cond_dim)).astype(np.float32),
                                    rng.integers(0, m, n), fit_normaliser(samples[:10_000]))
            nbytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(data))
            state = init_train_state(config, model)
            t = time.perf_counter()
            state, _ = jax.block_until_ready(block(state, data))  # compile and first block
            first = time.perf_counter() - t
            t = time.perf_counter()
            state, _ = jax.block_until_ready(block(state, data))
            steps_per_s = args.steps / (time.perf_counter() - t)
            print(f"  N {n:>9,d} grasps  M {m:>6,d} conditions  arrays {nbytes / 2 ** 20:7.1f} MiB  "
                  f"{steps_per_s:7.1f} steps/s ({steps_per_s * config.batch_size:,.0f} grasps/s)  "
                  f"first block {first:.1f} s  peak host {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
