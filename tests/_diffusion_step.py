"""One data-parallel diffusion training block, as a test and as a process of a group.

`run(mesh)` trains a tiny denoiser for a few steps on fixed random data with
the minibatch split over `mesh` and returns its parameters as numpy. Run as a
script (`python _diffusion_step.py COORDINATOR NUM_PROCESSES PROCESS_ID`),
it joins a jax.distributed group with two CPU devices per process, runs the
same block as ONE program over every process's devices and prints a JSON
line with the parameters, so a test can compare it with one process.
"""

import json
import os
import sys

import numpy as np

CONFIG = dict(width=32, depth=1, time_dim=16, num_steps=40, batch_size=32, warmup_steps=5,
              block_steps=3, encoding_points=16, encoding_samples=256)
STEPS = 3


def data_arrays():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(64, 31)).astype(np.float32)
    cond = rng.normal(size=(4, 17)).astype(np.float32)
    return samples, cond, np.arange(64, dtype=np.int32) % 4


def run(mesh):
    import jax

    from diffrl_jax.diffusion.model import make_denoiser, model_kwargs
    from diffrl_jax.diffusion.train import (DiffusionConfig, TrainData, fit_normaliser, init_train_state,
                                            make_train_block, replicate_for_training)
    from diffrl_jax.parallel import to_host

    config = DiffusionConfig(**CONFIG)
    samples, cond, cond_index = data_arrays()
    model = make_denoiser(**model_kwargs(config, 31, 17))
    state = init_train_state(config, model)
    data = TrainData.create(samples, cond, cond_index, fit_normaliser(samples))
    if mesh is not None:
        state, data = replicate_for_training(state, data, mesh)
    state, metrics = make_train_block(config, model, STEPS, mesh)(state, data)
    params = to_host(state.params)
    return jax.tree.map(np.asarray, params), float(to_host(metrics["loss"]))


if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    from diffrl_jax import parallel, runtime

    runtime.configure("")
    coordinator, processes, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    parallel.initialize(parallel.DistributedConfig(coordinator, processes, pid), timeout_s=60)
    import jax

    params, loss = run(parallel.data_mesh())
    leaves = [np.asarray(x).tolist() for x in jax.tree.leaves(params)]
    print(json.dumps({"process": pid, "devices": jax.device_count(), "loss": loss, "params": leaves}))
