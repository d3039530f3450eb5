"""Grasp proposals closed in simulation: shapes, determinism, contact and limits.

Every check is with MuJoCo's C engine (no JAX compilation); the whole file
runs in a few seconds on a CPU.
"""

import functools

import mujoco
import numpy as np
import pytest

from _paths import SHARED_DATA, requires_shared_data
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.errors import ConfigError
from diffrl_jax.sim.geometry import hand_qpos
from diffrl_jax.hand import constants
from diffrl_jax.objects import assets
from diffrl_jax.scene import build_scene
from diffrl_jax.sim.propose import propose_grasps

FINGERS = ("ff", "mf", "rf", "lf", "th")


@functools.cache
def _scene(name):
    return build_scene(assets.builtin_object(name))


@functools.cache
def _box_grasps():
    return propose_grasps(_scene("box"), 12, seed=0)


def _finger_distances(scene, grasps):
    """[N, 5] smallest signed distance (m) of each finger's links to the object, thumb last;
    [N] deepest hand-object overlap (m, >= 0)."""
    model = scene.model
    data = mujoco.MjData(model)
    names = [model.geom(g).name for g in scene.hand_geoms]
    links = [[g for g, name in zip(scene.hand_geoms, names)
              if name.startswith(f"robot0:C_{f}") and "metacarpal" not in name] for f in FINGERS]
    fromto = np.zeros(6)

    def distance(geoms, distmax):
        return min(mujoco.mj_geomDistance(model, data, g, o, distmax, fromto)
                   for g in geoms for o in scene.object_geoms)

    fingers, penetration = [], []
    for qpos in hand_qpos(grasps):
        data.qpos[:] = model.qpos0  # the object at its reset pose: the object frame
        data.qpos[scene.hand_qpos] = qpos
        mujoco.mj_kinematics(model, data)
        fingers.append([distance(geoms, 0.1) for geoms in links])
        penetration.append(max(0.0, -distance(scene.hand_geoms, 0.01)))
    return np.array(fingers), np.array(penetration)


def test_shapes_dtype_and_rotations():
    grasps = _box_grasps()
    assert grasps.shape == (12, grasp_lib.GRASP_DIM)
    assert grasps.dtype == np.float64
    assert np.all(np.isfinite(grasps))
    _, rotation, _ = grasp_lib.split_grasps(grasps)
    np.testing.assert_allclose(rotation @ np.swapaxes(rotation, -1, -2),
                               np.broadcast_to(np.eye(3), rotation.shape), atol=1e-9)
    # Different palm poses, not one grasp repeated.
    assert len(np.unique(np.round(grasps[:, :3], 4), axis=0)) == len(grasps)


def test_deterministic_for_a_seed_whatever_threads_and_batches():
    scene = _scene("box")
    a = _box_grasps()
    b = propose_grasps(scene, 12, seed=0, nthread=1, batch_size=16)
    np.testing.assert_array_equal(a, b)
    c = propose_grasps(scene, 12, seed=1)
    assert not np.allclose(a, c)


def test_box_thumb_and_two_fingers_touch_without_deep_penetration():
    fingers, penetration = _finger_distances(_scene("box"), _box_grasps())
    touching = fingers < 1e-3
    assert np.all(touching[:, -1]), fingers  # the thumb
    assert np.all(touching[:, :-1].sum(axis=1) >= 2), fingers
    assert np.all(penetration <= 2e-3), penetration


def test_joints_within_hand_limits():
    joints = _box_grasps()[:, grasp_lib.JOINTS]
    assert np.all(joints >= constants.JOINT_RANGES[:, 0])
    assert np.all(joints <= constants.JOINT_RANGES[:, 1])
    assert np.all(grasp_lib.joint_limit_violation(_box_grasps()) == 0)


def test_sphere_gets_grasps_too():
    # A baseball: the kinematic example generator finds none on it.
    scene = _scene("sphere")
    grasps = propose_grasps(scene, 4, seed=0)
    fingers, penetration = _finger_distances(scene, grasps)
    assert np.all(fingers[:, -1] < 1e-3)
    assert np.all((fingers[:, :-1] < 1e-3).sum(axis=1) >= 2)
    assert np.all(penetration <= 2e-3)


@requires_shared_data
def test_dexgraspnet_mesh():
    code = "sem-Bottle-437678d4bc6be981c8724d5673a063a6"
    path = SHARED_DATA / "meshdata" / code / "coacd" / "decomposed.obj"
    scene = build_scene(assets.mesh_object(path, 0.1))
    grasps = propose_grasps(scene, 3, seed=0)
    fingers, penetration = _finger_distances(scene, grasps)
    assert np.all(fingers[:, -1] < 1e-3)
    assert np.all(penetration <= 2e-3)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_count_raises(n):
    with pytest.raises(ConfigError, match="positive integer"):
        propose_grasps(_scene("box"), n)


@pytest.mark.parametrize("override, match", [
    (dict(clearance=(0.02, 0.01)), "clearance"),
    (dict(close_s=0.0), "close_s"),
    (dict(closing_strength=-1.0), "closing_strength"),
    (dict(batch_size=0), "batch_size"),
    (dict(no_such_field=1), "override"),
])
def test_bad_config_raises(override, match):
    with pytest.raises(ConfigError, match=match):
        propose_grasps(_scene("box"), 1, **override)


def test_too_few_found_raises():
    with pytest.raises(ConfigError, match=r"found only \d+ of 50 grasps on 'box' in 4 candidates"):
        propose_grasps(_scene("box"), 50, max_candidates=4)
