"""The diffusion model: schedule numerics, samplers, compile counts, checkpoints, conditioning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrl_jax import checkpoint
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data.dexgraspnet import load_dexgraspnet
from diffrl_jax.diffusion import metrics, pipeline, sampler
from diffrl_jax.diffusion import schedule as schedule_lib
from diffrl_jax.diffusion.model import make_denoiser, model_kwargs
from diffrl_jax.diffusion.train import (DiffusionConfig, Normaliser, TrainData, fit_normaliser,
                                        grasp_training_data, init_train_state, make_train_block,
                                        run_training)
from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.hand import constants
from tests._paths import SHARED_DATA, requires_shared_data

# A tiny network: these tests check plumbing, not quality.
TINY = DiffusionConfig(width=32, depth=1, time_dim=16, num_steps=40, batch_size=32, warmup_steps=5,
                       block_steps=20, encoding_points=16, encoding_samples=256)
COND_DIM = TINY.encoding_points + 1


# ---------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("make", [schedule_lib.cosine_schedule, schedule_lib.linear_schedule])
def test_schedule_is_monotone_and_in_range(make):
    schedule = make(100)
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    betas = np.asarray(schedule.betas)
    assert schedule.num_steps == 100 and abar.shape == (100,)
    assert np.all(np.diff(abar) < 0), "cumulative alphas must strictly decrease"
    assert 0.99 < abar[0] <= 1.0 and 0.0 < abar[-1] < 0.01
    assert np.all((betas > 0) & (betas < 1))
    np.testing.assert_allclose(abar, np.cumprod(1.0 - betas), rtol=1e-4)  # float32 tail


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_reverse_steps_with_the_true_noise_recover_the_clean_sample(prediction):
    schedule = schedule_lib.cosine_schedule(100)
    key_x, key_eps = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(key_x, (64, 5))
    eps = jax.random.normal(key_eps, (64, 5))
    t = jnp.arange(64) % 90  # abar well above float32 noise at these steps
    x_t = schedule_lib.add_noise(schedule, x0, eps, t)
    output = schedule_lib.training_target(schedule, x0, eps, t, prediction)
    x0_hat, eps_hat = schedule_lib.predict_x0_eps(schedule, x_t, t, output, prediction)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-4)
    # DDIM to "before step 0" gives x_0; to any earlier step, the same noise at that step.
    np.testing.assert_allclose(schedule_lib.ddim_step(schedule, x_t, t, -1, x0_hat, eps_hat), x0, atol=2e-4)
    t_prev = jnp.maximum(t - 7, 0)
    np.testing.assert_allclose(schedule_lib.ddim_step(schedule, x_t, t, t_prev, x0_hat, eps_hat),
                               schedule_lib.add_noise(schedule, x0, eps, t_prev), atol=2e-4)
    # DDPM's last step (t = 0) returns the posterior mean, which is x_0.
    x_1 = schedule_lib.add_noise(schedule, x0, eps, 0)
    np.testing.assert_allclose(schedule_lib.ddpm_step(schedule, x_1, 0, x0, eps), x0, atol=1e-4)


def test_ddpm_step_is_the_gaussian_posterior():
    """Mean and variance of q(x_{t-1} | x_t, x_0) against Bayes' rule in float64."""
    schedule = schedule_lib.cosine_schedule(100)
    t = 40
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    beta = np.asarray(schedule.betas, np.float64)[t]
    x0, x_t = jnp.array([[0.7]]), jnp.array([[0.3]])
    # Prior on x_{t-1}: N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}); likelihood of x_t: N(sqrt(1-beta) x, beta).
    prior_mean, prior_var = np.sqrt(abar[t - 1]) * 0.7, 1 - abar[t - 1]
    var = 1 / (1 / prior_var + (1 - beta) / beta)
    mean = var * (prior_mean / prior_var + np.sqrt(1 - beta) * 0.3 / beta)
    mean_step = schedule_lib.ddpm_step(schedule, x_t, t, x0, jnp.zeros((1, 1)))
    unit_step = schedule_lib.ddpm_step(schedule, x_t, t, x0, jnp.ones((1, 1)))
    assert float(mean_step[0, 0]) == pytest.approx(mean, abs=1e-5)
    assert float(unit_step[0, 0] - mean_step[0, 0]) == pytest.approx(np.sqrt(var), rel=1e-4)


def test_timesteps():
    np.testing.assert_array_equal(sampler.timesteps_for("ddim", 100, 1), [99])
    ts = sampler.timesteps_for("ddim", 100, 10)
    assert ts[0] == 99 and ts[-1] == 0 and len(set(ts.tolist())) == 10 and np.all(np.diff(ts) < 0)
    assert len(sampler.timesteps_for("ddpm", 100, None)) == 100
    with pytest.raises(ConfigError):
        sampler.timesteps_for("ddpm", 100, 10)
    with pytest.raises(ConfigError):
        sampler.timesteps_for("ddim", 100, 101)


# ---------------------------------------------------------------------------- mixture of Gaussians

MEANS = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
WEIGHTS = np.array([0.5, 0.3, 0.2])
STD = 0.15
N_SAMPLES = 4000  # binomial std of a weight estimate <= 0.008


def _mixture_eps(schedule):
    """The exact E[eps | x_t] of the mixture: the best possible eps-predicting denoiser."""
    def denoise(x, t):
        abar = schedule.alphas_cumprod[t]
        var = abar * STD**2 + 1.0 - abar  # every component's variance at step t
        diff = x[:, None, :] - jnp.sqrt(abar) * MEANS[None]
        resp = jax.nn.softmax(jnp.log(WEIGHTS) - 0.5 * jnp.sum(diff**2, -1) / var, axis=-1)
        return jnp.sum(resp[..., None] * jnp.sqrt(1.0 - abar) * diff / var, axis=1)

    return denoise


def _mixture_report(x):
    x = np.asarray(x, np.float64)
    distance = np.linalg.norm(x[:, None] - MEANS[None], axis=-1)
    nearest = distance.argmin(1)
    weights = np.bincount(nearest, minlength=3) / len(x)
    means = np.stack([x[nearest == k].mean(0) for k in range(3)])
    return weights, (distance.min(1) < 0.5).mean(), means


@pytest.mark.parametrize("method,steps", [("ddpm", None), ("ddim", 10)])
def test_sampler_recovers_mixture_modes_and_weights(method, steps):
    """Exact denoiser: weights within 0.03 (about 4 binomial stds), 97% of samples within
    0.5 (3.3 stds) of a mode, mode means within 0.1."""
    schedule = schedule_lib.cosine_schedule(100)
    timesteps = sampler.timesteps_for(method, 100, steps)

    @jax.jit
    def run(key):
        x_T = jax.random.normal(key, (N_SAMPLES, 2))
        return sampler.sample_loop(_mixture_eps(schedule), schedule, x_T, jax.random.fold_in(key, 1),
                                   timesteps, method, prediction="eps")

    weights, near, means = _mixture_report(run(jax.random.key(0)))
    np.testing.assert_allclose(weights, WEIGHTS, atol=0.03)
    assert near >= 0.97
    np.testing.assert_allclose(means, MEANS, atol=0.1)


def test_trained_denoiser_recovers_mixture_weights():
    """Trainer + model + sampler end to end on the 2-D mixture (v prediction, DDIM-10):
    weights within 0.06, 90% of samples within 0.5 of a mode."""
    rng = np.random.default_rng(0)
    component = rng.choice(3, 20000, p=WEIGHTS)
    data = MEANS[component] + STD * rng.normal(size=(20000, 2))
    config = DiffusionConfig(width=64, depth=2, time_dim=32, num_steps=800, batch_size=256,
                             learning_rate=3e-3, warmup_steps=50, block_steps=400, cond_dropout=0.0,
                             ema_decay=0.99)
    model = make_denoiser(data_dim=2, cond_dim=1, width=64, depth=2, time_dim=32)
    normaliser = fit_normaliser(data)
    train_data = TrainData.create(data, np.zeros((1, 1)), np.zeros(len(data), np.int32), normaliser)
    state = run_training(init_train_state(config, model), train_data, config, model)
    assert int(state.step) == 800
    sample = sampler.make_grasp_sampler(model, schedule_lib.cosine_schedule(100), num_samples=N_SAMPLES,
                                        method="ddim", steps=10, postprocess=None, x0_clip=5.0)
    weights, near, _ = _mixture_report(sample(state.ema_params, normaliser, jnp.zeros((1,)),
                                              jax.random.key(1)))
    np.testing.assert_allclose(weights, WEIGHTS, atol=0.06)
    assert near >= 0.9


# ---------------------------------------------------------------------------- shapes and compiles


def _tiny_model():
    return make_denoiser(**model_kwargs(TINY, grasp_lib.GRASP_DIM, COND_DIM))


def _normaliser():
    return Normaliser(jnp.zeros(grasp_lib.GRASP_DIM), jnp.full(grasp_lib.GRASP_DIM, 0.5))


def test_model_shapes_and_broadcast_conditioning():
    model = _tiny_model()
    params = init_train_state(TINY, model).params
    x = jnp.ones((7, grasp_lib.GRASP_DIM))
    cond = jnp.linspace(0, 0.1, COND_DIM)
    apply = jax.jit(model.apply)
    shared = apply(params, x, jnp.array([3]), cond[None])
    per_sample = apply(params, x, jnp.full((7,), 3), jnp.tile(cond, (7, 1)))
    assert shared.shape == (7, grasp_lib.GRASP_DIM)
    np.testing.assert_allclose(shared, per_sample, atol=1e-6)


def test_one_compile_per_sampler_configuration():
    model = _tiny_model()
    params = init_train_state(TINY, model).params
    schedule = schedule_lib.cosine_schedule(TINY.num_diffusion_steps)
    normaliser = _normaliser()
    cond = jnp.full((COND_DIM,), 0.05)
    for method, steps, guidance in [("ddim", 10, 1.0), ("ddim", 4, 2.0), ("ddpm", None, 1.0)]:
        sample = sampler.make_grasp_sampler(model, schedule, num_samples=16, method=method, steps=steps,
                                            guidance_scale=guidance)
        for seed in range(3):  # new keys, conditions and parameter values: no recompilation
            grasps = sample(jax.tree.map(lambda p: p * (1 + seed), params), normaliser, cond * seed,
                            jax.random.key(seed))
            assert grasps.shape == (16, grasp_lib.GRASP_DIM) and grasps.dtype == jnp.float32
        assert sample._cache_size() == 1, (method, steps, guidance)
        assert bool(jnp.all(jnp.isfinite(grasps)))
        assert metrics.rotation_check(grasps) < 1e-5
        assert float(jnp.max(grasp_lib.joint_limit_violation(grasps))) < 1e-6


def test_train_block_compiles_once_and_learns():
    model = _tiny_model()
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(100, grasp_lib.GRASP_DIM))
    data = TrainData.create(samples, rng.uniform(0, 0.1, (2, COND_DIM)), np.arange(100) % 2,
                            fit_normaliser(samples))
    block = make_train_block(TINY, model)
    state = init_train_state(TINY, model)
    state, first = block(state, data)
    state, second = block(state, data)
    assert block._cache_size() == 1
    assert int(state.step) == 2 * TINY.block_steps
    assert set(first) == {"loss", "grad_norm", "learning_rate"}
    assert np.isfinite(float(second["loss"])) and float(second["learning_rate"]) > 0
    # The EMA trails the parameters but has moved from the initialisation.
    init = init_train_state(TINY, model)
    leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[0])  # noqa: E731
    assert not np.allclose(leaf(state.ema_params), leaf(init.params))
    assert not np.allclose(leaf(state.ema_params), leaf(state.params))


# ---------------------------------------------------------------------------- config and checkpoints


def test_config_json_round_trip_and_validation():
    assert DiffusionConfig.from_json(TINY.to_json()) == TINY
    assert TINY.with_overrides({"width": "64", "learning_rate": "3e-4"}).width == 64
    for bad in ({"prediction": "x0"}, {"width": "0"}, {"cond_dropout": "1.5"}, {"nope": "1"},
                {"width": "wide"}, {"warmup_steps": "40"}):
        with pytest.raises(ConfigError):
            TINY.with_overrides(bad)
    with pytest.raises(ConfigError):
        DiffusionConfig.from_dict({**TINY.to_dict(), "unknown": 1})


def _save_tiny_checkpoint(directory, dataset_info):
    model = _tiny_model()
    state = init_train_state(TINY, model)
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(50, grasp_lib.GRASP_DIM))
    data = TrainData.create(samples, rng.uniform(0, 0.1, (1, COND_DIM)), np.zeros(50, np.int32),
                            fit_normaliser(samples))
    state, _ = make_train_block(TINY, model)(state, data)
    config = pipeline.checkpoint_config(TINY, model_kwargs(TINY, grasp_lib.GRASP_DIM, COND_DIM),
                                        fit_normaliser(samples), dataset_info)
    checkpoint.save(directory, int(state.step), state, config)
    return state, config


def test_checkpoint_round_trip(tmp_path):
    info = {"root": None, "object_codes": [], "scales": {}, "only_success": False, "num_grasps": 50}
    state, config = _save_tiny_checkpoint(tmp_path / "ckpt", info)
    model = make_denoiser(**checkpoint.load_config(tmp_path / "ckpt")["model_kwargs"])
    target = pipeline.abstract_train_state(TINY, model)
    restored, restored_config = checkpoint.restore(tmp_path / "ckpt", target)
    assert restored_config == config
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    trained = pipeline.load_trained(tmp_path / "ckpt")
    assert trained.config == TINY and trained.step == TINY.block_steps
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(trained.params)):
        np.testing.assert_array_equal(a, b)
    # Resuming continues the identical run: same key, step and optimizer state.
    block = make_train_block(TINY, model)
    again, _ = block(restored, _reference_data())
    continued, _ = block(state, _reference_data())
    np.testing.assert_allclose(jax.tree.leaves(again.params)[0], jax.tree.leaves(continued.params)[0])


def _reference_data():
    rng = np.random.default_rng(2)
    samples = rng.normal(size=(30, grasp_lib.GRASP_DIM))
    return TrainData.create(samples, rng.uniform(0, 0.1, (1, COND_DIM)), np.zeros(30, np.int32),
                            fit_normaliser(samples))


# ---------------------------------------------------------------------------- conditioning


def test_unseen_objects_condition_the_sampler(tmp_path):
    """Built-in objects and a fresh OBJ file (never in training) encode and sample valid grasps."""
    info = {"root": None, "object_codes": [], "scales": {}, "only_success": False, "num_grasps": 50}
    _save_tiny_checkpoint(tmp_path / "ckpt", info)
    trained = pipeline.load_trained(tmp_path / "ckpt")
    box = np.array([[x, y, z] for x in (-0.4, 0.4) for y in (-0.6, 0.6) for z in (-0.9, 0.9)])
    mesh = tmp_path / "boxy.obj"
    mesh.write_text("o convex_0\n" + "".join(f"v {x} {y} {z}\n" for x, y, z in box))
    specs = [pipeline.resolve_object(trained, "builtin:mug"),
             pipeline.resolve_object(trained, "builtin:box", scale=0.2),
             pipeline.resolve_object(trained, str(mesh), scale=0.1)]
    assert [s.code for s in specs] == ["builtin-mug", "builtin-box", "boxy"]
    assert not any(s.seen for s in specs)
    assert specs[2].cond[-1] == pytest.approx(0.1 * np.linalg.norm([0.4, 0.6, 0.9]), rel=1e-5)
    grasps = [pipeline.sample_grasps(trained, s.cond, 10, steps=3, batch=8, seed=0) for s in specs]
    for g in grasps:
        assert g.shape == (10, grasp_lib.GRASP_DIM) and np.isfinite(g).all()
        assert grasp_lib.joint_limit_violation(g).max() == 0.0
    assert not np.allclose(grasps[0], grasps[1])  # the condition matters
    with pytest.raises(ConfigError):
        pipeline.resolve_object(trained, str(mesh))  # a mesh file needs its scale
    with pytest.raises(DataError):
        pipeline.resolve_object(trained, "no-such-code")


@requires_shared_data
def test_training_data_from_dexgraspnet():
    dataset = load_dexgraspnet(SHARED_DATA)
    samples, conds, cond_index, groups = grasp_training_data(dataset, TINY)
    assert samples.shape == (len(dataset), grasp_lib.GRASP_DIM)
    assert conds.shape == (len(groups), COND_DIM) and len(groups) == 15  # 3 objects x 5 scales
    assert cond_index.max() == len(groups) - 1
    with pytest.raises(DataError):  # the sample has no "success" label to filter by
        grasp_training_data(dataset, TINY, only_success=True)
    labelled = dataclasses.replace(dataset, extras={"success": np.arange(len(dataset)) % 3 == 0})
    kept, *_ = grasp_training_data(labelled, TINY)
    assert len(kept) == (np.arange(len(dataset)) % 3 == 0).sum()


def test_metrics():
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rotation *= np.linalg.det(rotation)
    base = grasp_lib.make_grasps(np.zeros(3), rotation, constants.JOINT_RANGES.mean(1))
    grasps = np.tile(base, (4, 1))
    grasps[1, 0] += 0.1  # 10 cm away
    div = metrics.diversity(grasps)
    assert div["translation_m"] == pytest.approx(0.1 * 6 / 12)  # 6 of 12 ordered pairs differ
    assert div["rotation_rad"] == pytest.approx(0.0, abs=1e-6)
    cov = metrics.coverage(grasps[:1], grasps)
    assert cov["coverage"] == pytest.approx(0.75) and cov["precision"] == 1.0
