"""Throughput of every stage, for `diffrl bench`: one figure per (stage, batch size).

Each figure has the device kind and count, the batch size, the JIT seconds
(lower + compile, measured apart) and the rate of a warm run (best of
`repeats`). Stages:

- physics: `mjx.step` of the hold scene (hand + a built-in object, four
  pieces) on B worlds, `steps` steps in one `lax.scan`: physics steps/s.
- validate: the hold test (settle + six pulls of the strict protocol) on B
  grasps: grasps validated/s and the physics steps/s they imply; MJX, or
  MuJoCo C (all threads) with `backend="mujoco"`.
- ppo: one PPO iteration of the refinement environment (B envs, one hold
  test per env step, minibatch epochs): environment steps/s.
- train: diffusion training steps/s (and samples/s) at batch B.
- sample: DDIM-10 grasps/s at batch B.

With several devices every batch is split over all of them (`parallel`).
The grasps are proposals for built-in objects (no downloads); rates depend
on the grasps only through contacts.

Host-side code (timers, temp files); the timed functions are the library's.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from diffrl_jax import parallel

STAGES = ("physics", "validate", "ppo", "train", "sample")
DEFAULT_BATCHES = {  # (cpu, accelerator)
    "physics": ([32, 128], [1024, 4096, 16384]),
    "validate": ([8, 32], [256, 1024, 4096]),
    "ppo": ([16, 64], [256, 1024, 4096]),
    "train": ([256, 1024], [1024, 4096, 16384]),
    "sample": ([1024, 4096], [4096, 16384, 65536]),
}
UNITS = {"physics": "physics steps/s", "validate": "grasps/s", "ppo": "env steps/s",
         "train": "train steps/s", "sample": "grasps/s"}


@dataclasses.dataclass
class Figure:
    stage: str
    batch: int
    value: float  # in `unit`
    unit: str
    jit_s: float
    run_s: float  # one warm call
    device: str
    devices: int
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def default_batches(stage: str) -> list[int]:
    cpu, accelerator = DEFAULT_BATCHES[stage]
    return cpu if jax.default_backend() == "cpu" else accelerator


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform} ({d.device_kind})"


def _mesh():
    return parallel.data_mesh() if jax.device_count() > 1 else None


def timed(fn: Callable, *args, repeats: int = 2):
    """(jit seconds, best warm-run seconds, output) of `fn` (jitted) on `args`."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile() if not hasattr(fn, "lower") else fn.lower(*args).compile()
    jit_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(*args))  # warm-up
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return jit_s, best, out


# ------------------------------------------------------------------ fixtures

@dataclasses.dataclass
class _World:
    template: object
    prepared: object
    fields: object
    grasps: np.ndarray  # [n, 31] proposals for the object


def _world(pieces: int, protocol_name: str = "strict") -> _World:
    from diffrl_jax.data.example import example_dataset
    from diffrl_jax.objects import assets
    from diffrl_jax.sim import bank, protocol

    template = bank.make_template(protocol.protocol(protocol_name), bank.ObjectBudget(pieces=pieces))
    dataset, _ = example_dataset("bottle", 8, seed=0)
    prepared = bank.prepare_object(assets.builtin_object("bottle"), template.budget)
    return _World(template, prepared, template.fields(prepared), np.asarray(dataset.grasps, np.float32))


# ------------------------------------------------------------------ stages

def bench_physics(batches: Sequence[int], steps: int = 50, pieces: int = 4, repeats: int = 2) -> list[Figure]:
    from diffrl_jax.scene import import_mjx
    from diffrl_jax.sim import bank, hold

    mjx = import_mjx()
    world = _world(pieces)
    template, mesh = world.template, _mesh()
    fields = world.fields  # a jit argument: MJX treats numpy model fields as static
    qpos, ctrl = jax.jit(lambda f, g: hold.initial_state(template, f, g))(fields, world.grasps)
    qpos, ctrl = np.asarray(qpos), np.asarray(ctrl)
    figures = []
    for b in batches:
        q, u = np.resize(qpos, (b, qpos.shape[-1])), np.resize(ctrl, (b, ctrl.shape[-1]))
        if mesh is not None:
            (q, u), _ = parallel.pad_batch((q, u), parallel.num_shards(mesh))
            q, u = parallel.shard_batch((q, u), mesh)

        def rollout(fields, q, u):
            m = bank.world_model(template, fields)

            def one(q, u):
                d = mjx.forward(m, template.blank_data.replace(qpos=q, ctrl=u))
                d, _ = jax.lax.scan(lambda d, _: (mjx.step(m, d), None), d, None, length=steps)
                return d.qpos

            return jax.vmap(one)(q, u)

        jit_s, run_s, _ = timed(rollout, fields, q, u, repeats=repeats)
        figures.append(Figure("physics", b, b * steps / run_s, UNITS["physics"], jit_s, run_s, _device(),
                              jax.device_count(), {"steps": steps, "backend": "mjx", "object_pieces": pieces}))
    return figures


def bench_validate(batches: Sequence[int], backend: str = "mjx", pieces: int = 8, group_size: int = 8,
                   repeats: int = 1) -> list[Figure]:
    from diffrl_jax.sim import backends, bank, hold

    engine = backends.get(backend)
    world = _world(pieces)
    template, protocol = world.template, world.template.protocol
    mesh = parallel.local_mesh() if jax.local_device_count() > 1 else None
    figures = []
    for b in batches:
        if engine.shards_over_devices:
            groups = parallel.padded_size(max(1, b // group_size), parallel.num_shards(mesh))
            n = b // groups if b >= groups else 1
            fields = bank.stack_fields([world.fields] * groups)
            g = np.resize(world.grasps, (groups, n, world.grasps.shape[-1]))
            if mesh is not None:
                fields, g = parallel.shard_batch((fields, g), mesh)
            jit_s, run_s, _ = timed(hold.make_hold_test(template), fields, g, repeats=repeats)
            b_real, devices = groups * n, jax.device_count()
        else:
            g = np.resize(world.grasps, (b, world.grasps.shape[-1]))
            start = time.perf_counter()
            engine.hold(template, world.prepared, g[:1])  # JAX squeeze targets compile
            jit_s = time.perf_counter() - start
            run_s = np.inf
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                engine.hold(template, world.prepared, g)
                run_s = min(run_s, time.perf_counter() - start)
            b_real, devices = b, 1
        figures.append(Figure(
            "validate", b_real, b_real / run_s, UNITS["validate"], jit_s, run_s, engine.device_name(), devices,
            {"backend": engine.name, "physics_steps_per_s": b_real * protocol.total_steps / run_s,
             "protocol": protocol.name, "steps_per_grasp": protocol.total_steps, "object_pieces": pieces}))
    return figures


def bench_ppo(batches: Sequence[int], backend: str = "mjx", pieces: int = 8, repeats: int = 1) -> list[Figure]:
    from diffrl_jax.data.dexgraspnet import write_mesh
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet, write_dexgraspnet
    from diffrl_jax.data.example import example_dataset
    from diffrl_jax.rl import ppo, refine
    from diffrl_jax.rl.refine_env import RefineConfig
    from diffrl_jax.sim import backends, bank, protocol

    engine = backends.get(backend)
    hold_protocol = protocol.protocol("strict")
    with tempfile.TemporaryDirectory() as root:
        dataset, text = example_dataset("bottle", 8, seed=0)
        write_mesh(root, dataset.object_codes[0], text)
        write_dexgraspnet(root, dataset)
        problem = refine.build_problem(load_dexgraspnet(root), hold_protocol, bank.ObjectBudget(pieces=pieces),
                                       heldout_fraction=0.0)
    env = refine.make_env(problem, RefineConfig(), engine)
    mesh = _mesh() if engine.shards_over_devices else None
    figures = []
    for b in batches:
        b = parallel.padded_size(b, 4 * parallel.num_shards(mesh))
        config = ppo.PPOConfig(num_envs=b, num_minibatches=4, num_epochs=4, num_iterations=1,
                               init_action_std=0.3)
        state = ppo.init(config, env, jax.random.PRNGKey(0))
        iteration = ppo.make_iteration(config, env, mesh)
        if mesh is not None:
            state = ppo.shard_state(state, mesh)
            iteration = jax.jit(iteration, out_shardings=(ppo.state_shardings(state, mesh),
                                                          parallel.replicated_sharding(mesh)))
        jit_s, run_s, _ = timed(iteration, state, repeats=repeats)
        steps = b * config.unroll_length
        figures.append(Figure(
            "ppo", b, steps / run_s, UNITS["ppo"], jit_s, run_s, engine.device_name(),
            parallel.num_shards(mesh),
            {"backend": engine.name, "unroll_length": config.unroll_length,
             "physics_steps_per_s": steps * hold_protocol.total_steps / run_s}))
    return figures


def _diffusion_model(config=None):
    from diffrl_jax.diffusion.config import DiffusionConfig
    from diffrl_jax.diffusion.model import make_denoiser, model_kwargs

    config = DiffusionConfig() if config is None else config
    return config, make_denoiser(**model_kwargs(config, 31, config.encoding_points + 1))


def bench_train(batches: Sequence[int], block_steps: int = 50, repeats: int = 2) -> list[Figure]:
    from diffrl_jax.diffusion.train import (TrainData, fit_normaliser, init_train_state, make_train_block,
                                            replicate_for_training)

    mesh = _mesh()
    figures = []
    for b in batches:
        b = parallel.padded_size(b, parallel.num_shards(mesh))
        config, model = _diffusion_model()
        config = dataclasses.replace(config, batch_size=b, block_steps=block_steps)
        rng = np.random.default_rng(0)
        samples = rng.normal(size=(4096, 31))
        data = TrainData.create(samples, rng.uniform(0, 0.1, (16, model.cond_dim)), np.arange(4096) % 16,
                                fit_normaliser(samples))
        state = init_train_state(config, model)
        if mesh is not None:
            state, data = replicate_for_training(state, data, mesh)
        jit_s, run_s, _ = timed(make_train_block(config, model, block_steps, mesh), state, data, repeats=repeats)
        figures.append(Figure("train", b, block_steps / run_s, UNITS["train"], jit_s, run_s, _device(),
                              parallel.num_shards(mesh),
                              {"samples_per_s": b * block_steps / run_s, "width": config.width,
                               "depth": config.depth}))
    return figures


def bench_sample(batches: Sequence[int], steps: int = 10, repeats: int = 2) -> list[Figure]:
    from diffrl_jax.diffusion import sampler
    from diffrl_jax.diffusion.train import fit_normaliser, init_train_state, make_schedule

    config, model = _diffusion_model()
    params = init_train_state(config, model).ema_params
    normaliser = fit_normaliser(np.random.default_rng(0).normal(size=(100, 31)))
    cond = np.zeros(model.cond_dim, np.float32)
    mesh = _mesh()
    args = (params, normaliser, cond)
    if mesh is not None:
        args = parallel.replicate(jax.device_get(args), mesh)
    figures = []
    for b in batches:
        b = parallel.padded_size(b, parallel.num_shards(mesh))
        fn = sampler.make_grasp_sampler(model, make_schedule(config), num_samples=b, method="ddim", steps=steps,
                                        prediction=config.prediction, mesh=mesh)
        key = jax.random.key(0)
        if mesh is not None:
            key = jax.random.wrap_key_data(parallel.replicate(jax.random.key_data(key), mesh))
        jit_s, run_s, _ = timed(fn, *args, key, repeats=repeats)
        figures.append(Figure("sample", b, b / run_s, UNITS["sample"], jit_s, run_s, _device(),
                              parallel.num_shards(mesh), {"sampler": f"ddim-{steps}"}))
    return figures


def run(stages: Sequence[str], batches: dict[str, Sequence[int]] | None = None, backend: str | None = None,
        on_figure: Callable[[Figure], None] | None = None) -> list[Figure]:
    """Every figure of `stages` (default batches per platform); `backend` for validate/ppo."""
    from diffrl_jax.sim import backends

    backend = backend or backends.default_name()
    batches = batches or {}
    figures = []
    for stage in stages:
        sizes = batches.get(stage) or default_batches(stage)
        if stage == "physics":
            out = bench_physics(sizes)
        elif stage == "validate":
            out = bench_validate(sizes, backend)
        elif stage == "ppo":
            out = bench_ppo(sizes, backend)
        elif stage == "train":
            out = bench_train(sizes)
        else:
            out = bench_sample(sizes)
        for figure in out:
            figures.append(figure)
            if on_figure is not None:
                on_figure(figure)
    return figures
