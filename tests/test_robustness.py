"""Grasp robustness (`sim.robustness`): the perturbation's numerics and the label.

The label runs on MuJoCo's C engine with a short strict protocol over the
first grasps of the shared bottle, so it costs a few seconds.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants
from diffrl_jax.sim import protocol, robustness
from diffrl_jax.sim.robustness import PerturbConfig
from tests._paths import SHARED_DATA, requires_shared_data

BOTTLE = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"


def _grasps(n=3, seed=0):
    rng = np.random.default_rng(seed)
    low, high = constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1]
    rot = rotations.rotvec_to_matrix(rng.normal(size=(n, 3)))
    joints = rng.uniform(low, high, size=(n, constants.NUM_JOINTS))
    return grasp_lib.make_grasps(rng.normal(scale=0.1, size=(n, 3)), rot, joints).astype(np.float32)


def test_shapes_and_determinism():
    g = _grasps()
    config = PerturbConfig(samples=5)
    a = robustness.perturb(jnp.asarray(g), jax.random.PRNGKey(1), config)
    b = robustness.perturb(jnp.asarray(g), jax.random.PRNGKey(1), config)
    c = robustness.perturb(jnp.asarray(g), jax.random.PRNGKey(2), config)
    assert a.shape == (3, 5, grasp_lib.GRASP_DIM) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(np.isfinite(a))


def test_zero_noise_returns_the_grasp():
    g = _grasps()
    config = PerturbConfig(samples=2, translation_m=0.0, rotation_rad=0.0, joints_rad=0.0)
    out = np.asarray(robustness.perturb(jnp.asarray(g), jax.random.PRNGKey(0), config))
    np.testing.assert_allclose(out, np.broadcast_to(g[:, None], out.shape), atol=1e-6)


def test_noise_statistics_match_the_truncated_gaussian():
    # One grasp in the middle of its joint ranges (no clipping), many copies.
    low, high = constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1]
    g = grasp_lib.make_grasps(np.zeros(3), np.eye(3), (low + high) / 2).astype(np.float32)
    config = PerturbConfig(samples=20000, translation_m=0.003, rotation_rad=0.05, joints_rad=0.02)
    out = np.asarray(robustness.perturb(jnp.asarray(g), jax.random.PRNGKey(3), config), np.float64)
    t, rot, q = grasp_lib.split_grasps(out)
    # A Gaussian truncated at +-2 sigma has standard deviation 0.880 sigma.
    a = 2.0
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    ratio = math.sqrt(1 - 2 * a * pdf / math.erf(a / math.sqrt(2)))
    for values, std in ((t, config.translation_m), (q - (low + high) / 2, config.joints_rad)):
        assert np.abs(values).max() <= a * std * (1 + 1e-4)
        np.testing.assert_allclose(values.mean(0), 0.0, atol=0.03 * std)
        np.testing.assert_allclose(values.std(0), ratio * std, rtol=0.03)
    # Rotations stay rotations, turned by the drawn angle.
    np.testing.assert_allclose(rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-5)
    angle = rotations.rotation_angle(np.broadcast_to(np.eye(3), rot.shape), rot)
    assert angle.max() <= a * config.rotation_rad * math.sqrt(3) * (1 + 1e-4)
    # |rotation vector|^2 sums three truncated components.
    np.testing.assert_allclose(np.mean(angle ** 2), 3 * (ratio * config.rotation_rad) ** 2, rtol=0.05)


def test_joints_stay_inside_their_limits():
    low, high = constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1]
    at_limit = grasp_lib.make_grasps(np.zeros(3), np.eye(3), high).astype(np.float32)
    outside = grasp_lib.make_grasps(np.zeros(3), np.eye(3), high + 0.1).astype(np.float32)
    config = PerturbConfig(samples=64, joints_rad=0.2)
    for g, top in ((at_limit, high), (outside, high + 0.1)):
        q = np.asarray(robustness.perturb(jnp.asarray(g), jax.random.PRNGKey(0), config))[..., grasp_lib.JOINTS]
        assert np.all(q <= top + 1e-6) and np.all(q >= low - 1e-6)


@pytest.mark.parametrize("field, value", [("samples", 0), ("samples", 1.5), ("translation_m", -1.0),
                                          ("joints_rad", float("nan")), ("truncate", 0.0)])
def test_bad_config_is_a_config_error(field, value):
    with pytest.raises(ConfigError, match=field):
        PerturbConfig().replace(**{field: value})


def test_unknown_field_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown robustness field"):
        PerturbConfig().replace(noise=1.0)


@pytest.fixture(scope="module")
def bottle():
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet

    return load_dexgraspnet(SHARED_DATA, objects=[BOTTLE]).first_per_object(4)


SHORT = protocol.protocol("strict", hold_s=0.2)


@requires_shared_data
def test_label_is_a_deterministic_fraction(bottle):
    config = PerturbConfig(samples=4)
    values, timings = robustness.robustness(bottle, SHORT, config, nthread=2)
    again, _ = robustness.robustness(bottle, SHORT, config, nthread=1)
    assert values.shape == (4,)
    np.testing.assert_array_equal(values, again)
    np.testing.assert_array_equal(values * 4, np.round(values * 4))  # multiples of 1 / samples
    assert np.all((values >= 0) & (values <= 1)) and timings["grasps_per_s"] > 0
    copies, held, _ = robustness.perturbed_holds(bottle, SHORT, config, nthread=2)
    assert copies.shape == (4, 4, grasp_lib.GRASP_DIM) and held.shape == (4, 4) and held.dtype == bool
    np.testing.assert_array_equal(held.mean(axis=1), values)
    # Each copy lies within the truncated noise of its grasp.
    t = grasp_lib.split_grasps(copies)[0] - bottle.grasps[:, None, :3]
    assert np.abs(t).max() <= config.truncate * config.translation_m + 1e-6


@requires_shared_data
def test_without_noise_the_label_is_the_hold_result(bottle):
    from diffrl_jax.sim import validate

    still = PerturbConfig(samples=2, translation_m=0.0, rotation_rad=0.0, joints_rad=0.0)
    values, _ = robustness.robustness(bottle, SHORT, still, nthread=2)
    _, rows = validate.validate_dataset(bottle, SHORT, backend="mujoco", nthread=2)
    # float32 copies of the grasps: the same hold outcome as the float64 originals.
    np.testing.assert_array_equal(values, rows["success"].astype(float))


@requires_shared_data
def test_a_hand_far_away_has_robustness_zero(bottle):
    far = dataclasses.replace(bottle, grasps=bottle.grasps + np.r_[0.5, np.zeros(30)])
    values, _ = robustness.robustness(far, SHORT, PerturbConfig(samples=2), nthread=2)
    np.testing.assert_array_equal(values, 0.0)
