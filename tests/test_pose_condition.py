"""The resting-pose condition of the diffusion model: it changes the samples, it drops out, bad input.

A model trained on two pose classes of one object, each with its own grasps,
must sample each class's grasps when given that class's up-direction, and
still sample (both) without one.
"""

import jax
import numpy as np
import pytest

from diffrl_jax import checkpoint
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data.dexgraspnet import GraspDataset
from diffrl_jax.diffusion import pipeline, sampler
from diffrl_jax.diffusion.model import make_denoiser, model_kwargs
from diffrl_jax.diffusion.train import (
    DiffusionConfig,
    TrainData,
    fit_normaliser,
    init_train_state,
    make_schedule,
    pose_conditions,
    run_training,
)
from diffrl_jax.errors import ConfigError, DataError

CONFIG = DiffusionConfig(width=64, depth=2, time_dim=16, num_steps=600, batch_size=64, warmup_steps=20,
                         block_steps=100, learning_rate=3e-3, encoding_points=4, encoding_samples=64,
                         cond_dropout=0.1, pose_dropout=0.2, pose_condition=True, ema_decay=0.99)
COND_DIM = CONFIG.encoding_points + 1
UP = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)  # lying upright; on its side


def _two_class_data(n: int = 256, seed: int = 0):
    """Grasps of class 0 sit at +x (4 cm), of class 1 at -x: the up-direction says which."""
    rng = np.random.default_rng(seed)
    grasps = rng.normal(0.0, 0.003, size=(n, grasp_lib.GRASP_DIM))
    label = np.arange(n) % 2
    grasps[:, 0] = np.where(label == 0, 0.04, -0.04) + rng.normal(0.0, 0.003, n)
    grasps[:, grasp_lib.ROT6D] = [1, 0, 0, 0, 1, 0]
    return grasps, label


@pytest.fixture(scope="module")
def trained_pose_model(tmp_path_factory):
    grasps, label = _two_class_data()
    normaliser = fit_normaliser(grasps)
    kwargs = model_kwargs(CONFIG, grasp_lib.GRASP_DIM, COND_DIM, pose_dim=3)
    model = make_denoiser(**kwargs)
    cond = np.full((1, COND_DIM), 0.05, np.float32)
    data = TrainData.create(grasps, cond, np.zeros(len(grasps), np.int32), normaliser, UP[label])
    state = run_training(init_train_state(CONFIG, model), data, CONFIG, model)
    directory = tmp_path_factory.mktemp("pose") / "ckpt"
    info = {"root": None, "object_codes": [], "scales": {}, "only_success": False, "num_grasps": len(grasps)}
    checkpoint.save(directory, int(state.step), state, pipeline.checkpoint_config(CONFIG, kwargs, normaliser, info))
    return pipeline.load_trained(directory), cond[0]


def test_the_pose_condition_chooses_the_class_of_grasps(trained_pose_model):
    trained, cond = trained_pose_model
    assert pipeline.has_pose_condition(trained)
    n = 200
    for k, up in enumerate(UP):
        x = pipeline.sample_grasps(trained, cond, n, steps=20, seed=k, pose=up)[:, 0]
        own = np.mean(np.sign(x) == (1 if k == 0 else -1))
        # Untrained on the pose, a sampler would split about evenly: 200 samples
        # with at least 90% on one side have p < 1e-29 under a fair coin.
        assert own >= 0.9, (k, own)
    # One pose per sample: the batch follows each sample's own condition.
    per_sample = np.repeat(UP, n // 2, axis=0)
    x = pipeline.sample_grasps(trained, cond, n, steps=20, seed=5, pose=per_sample, batch=64)[:, 0]
    assert np.mean(x[: n // 2] > 0) >= 0.9 and np.mean(x[n // 2:] < 0) >= 0.9
    # Without a pose (the null pose of dropout): both classes come out.
    x = pipeline.sample_grasps(trained, cond, n, steps=20, seed=7)[:, 0]
    assert 0.2 <= np.mean(x > 0) <= 0.8


def test_pose_input_changes_the_output_and_drops_out():
    kwargs = model_kwargs(CONFIG, grasp_lib.GRASP_DIM, COND_DIM, pose_dim=3)
    model = make_denoiser(**kwargs)
    params = init_train_state(CONFIG, model).params
    # Perturb the zero-initialised output layer so the network is not constant.
    params = jax.tree.map(lambda p: p + 0.1 * np.random.default_rng(0).normal(size=p.shape), params)
    x = np.zeros((2, grasp_lib.GRASP_DIM), np.float32)
    t, cond = np.zeros((1,), np.int32), np.full((1, COND_DIM), 0.05, np.float32)
    a = model.apply(params, x, t, cond, None, UP)
    assert not np.allclose(a[0], a[1]), "two poses, same output"
    dropped = model.apply(params, x, t, cond, None, UP, np.ones((2,), bool))
    none = model.apply(params, x, t, cond)
    np.testing.assert_allclose(dropped, none, atol=1e-6)  # a dropped pose is no pose
    plain = make_denoiser(**model_kwargs(CONFIG, grasp_lib.GRASP_DIM, COND_DIM))
    assert "pose_dim" not in model_kwargs(CONFIG, grasp_lib.GRASP_DIM, COND_DIM)  # old checkpoints read alike
    with pytest.raises(ValueError, match="no pose input"):
        plain.init(jax.random.key(0), x, t, cond, None, UP)


def test_bad_pose_conditions_are_refused(trained_pose_model, tmp_path):
    trained, cond = trained_pose_model
    for bad, match in ((np.zeros(2), "shape"), (np.zeros((3, 3)), "shape"), (np.array([0.0, 0.0, 2.0]), "unit"),
                       (np.array([np.nan, 0.0, 1.0]), "non-finite")):
        with pytest.raises(ConfigError, match=match):
            pipeline.sample_grasps(trained, cond, 4, steps=2, pose=bad)
    # A model without a pose input, asked for a pose.
    kwargs = model_kwargs(CONFIG, grasp_lib.GRASP_DIM, COND_DIM)
    model = make_denoiser(**kwargs)
    state = init_train_state(CONFIG, model)
    info = {"root": None, "object_codes": [], "scales": {}, "only_success": False, "num_grasps": 1}
    grasps, _ = _two_class_data(8)
    checkpoint.save(tmp_path / "plain", 0, state,
                    pipeline.checkpoint_config(CONFIG, kwargs, fit_normaliser(grasps), info))
    plain = pipeline.load_trained(tmp_path / "plain")
    assert not pipeline.has_pose_condition(plain)
    with pytest.raises(ConfigError, match="without a pose condition"):
        pipeline.sample_grasps(plain, cond, 4, steps=2, pose=UP[0])


def test_pose_labels_of_a_dataset():
    grasps, label = _two_class_data(6)
    up = UP[label].astype(np.float64)
    labels = {"up_x": up[:, 0], "up_y": up[:, 1], "up_z": up[:, 2]}
    dataset = GraspDataset(grasps, np.full(6, 0.1), np.zeros(6, np.int32), ("thing",), extras=labels)
    keep = np.array([True, True, False, True, False, True])
    np.testing.assert_allclose(pose_conditions(dataset, keep), up[keep])
    with pytest.raises(DataError, match="diffrl tabletop"):
        pose_conditions(GraspDataset(grasps, np.full(6, 0.1), np.zeros(6, np.int32), ("thing",)), keep)
    bad = dict(labels, up_z=up[:, 2] * 3)
    with pytest.raises(DataError, match="not a unit vector"):
        pose_conditions(GraspDataset(grasps, np.full(6, 0.1), np.zeros(6, np.int32), ("thing",), extras=bad), keep)


def test_guidance_with_a_pose_compiles_and_stays_valid(trained_pose_model):
    trained, cond = trained_pose_model
    sample = sampler.make_grasp_sampler(trained.model, make_schedule(trained.config), num_samples=8, steps=4,
                                        guidance_scale=2.0)
    out = sample(trained.params, trained.normaliser, cond, jax.random.key(0), UP[0])
    assert out.shape == (8, grasp_lib.GRASP_DIM) and np.all(np.isfinite(np.asarray(out)))
