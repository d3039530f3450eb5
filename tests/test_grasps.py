"""The canonical grasp array: layout, DexGraspNet qpos, frames, wrist, limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffrl_jax.data import grasps as gr
from diffrl_jax.data import rotations as rot
from diffrl_jax.hand import constants
from diffrl_jax.data.safe_npy import load_object_npy

from _elementary import rx, ry, rz
from _paths import SHARED_DATA, requires_shared_data

PI = np.pi
SETTINGS = settings(max_examples=30, deadline=None)


def random_qpos(rng, n):
    """Principal-range DexGraspNet arrays: translation, euler, joints."""
    translation = rng.normal(scale=0.1, size=(n, 3))
    euler = np.stack(
        [rng.uniform(-PI, PI, n), rng.uniform(-1.5, 1.5, n), rng.uniform(-PI, PI, n)], axis=-1
    )
    joints = rng.uniform(constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1], (n, constants.NUM_JOINTS))
    return translation, euler, joints


def random_pose(rng, batch=()):
    quat = rng.normal(size=batch + (4,))
    return rot.quat_to_matrix(quat), rng.normal(size=batch + (3,))


seeds = st.integers(0, 2**32 - 1)


# --- Layout -------------------------------------------------------------------


def test_layout_constants():
    assert gr.GRASP_DIM == 31
    sizes = [s.stop - s.start for s in (gr.TRANSLATION, gr.ROT6D, gr.JOINTS)]
    assert sizes == [3, 6, constants.NUM_JOINTS]
    assert gr.JOINTS.stop == gr.GRASP_DIM


@SETTINGS
@given(seeds)
def test_make_split_round_trip(seed):
    rng = np.random.default_rng(seed)
    translation, euler, joints = random_qpos(rng, 5)
    rotation = rot.euler_sxyz_to_matrix(euler)
    grasps = gr.make_grasps(translation, rotation, joints)
    assert grasps.shape == (5, 31) and grasps.dtype == np.float64
    t, r, j = gr.split_grasps(grasps)
    np.testing.assert_array_equal(t, translation)
    np.testing.assert_array_equal(j, joints)
    np.testing.assert_allclose(r, rotation, atol=1e-12)


def test_make_grasps_broadcasts_batch_dims():
    grasps = gr.make_grasps(np.zeros((4, 1, 3)), np.eye(3), np.zeros((2, constants.NUM_JOINTS)))
    assert grasps.shape == (4, 2, 31)
    np.testing.assert_array_equal(grasps[..., gr.ROT6D], np.broadcast_to([1, 0, 0, 0, 1, 0], (4, 2, 6)))


# --- DexGraspNet qpos -------------------------------------------------------------


@SETTINGS
@given(seeds)
def test_dexgraspnet_qpos_round_trip(seed):
    translation, euler, joints = random_qpos(np.random.default_rng(seed), 8)
    grasps = gr.grasps_from_dexgraspnet_qpos(translation, euler, joints)
    t, e, j = gr.grasps_to_dexgraspnet_qpos(grasps)
    np.testing.assert_array_equal(t, translation)
    np.testing.assert_array_equal(j, joints)
    wrapped = (e - euler + PI) % (2 * PI) - PI  # +-pi may come back as -+pi
    np.testing.assert_allclose(wrapped, 0.0, atol=1e-12)


def test_qpos_dicts_round_trip_exactly():
    translation, euler, joints = random_qpos(np.random.default_rng(0), 3)
    dicts = gr.arrays_to_qpos_dicts(translation, euler, joints)
    assert len(dicts) == 3
    assert tuple(dicts[0]) == constants.QPOS_KEYS
    assert list(dicts[0])[-6:] == ["WRJRx", "WRJRy", "WRJRz", "WRJTx", "WRJTy", "WRJTz"]
    assert all(type(v) is float for v in dicts[1].values())
    assert dicts[2]["WRJTy"] == translation[2, 1] and dicts[2]["WRJRz"] == euler[2, 2]
    assert dicts[0]["robot0:THJ0"] == joints[0, -1]
    back = gr.qpos_dicts_to_arrays(dicts)
    for got, expected in zip(back, (translation, euler, joints)):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, expected)


def test_qpos_dicts_to_arrays_empty():
    translation, euler, joints = gr.qpos_dicts_to_arrays([])
    assert translation.shape == (0, 3) and euler.shape == (0, 3) and joints.shape == (0, 22)


def test_qpos_dicts_missing_key_is_named():
    dicts = gr.arrays_to_qpos_dicts(*random_qpos(np.random.default_rng(1), 3))
    del dicts[2]["WRJRy"]
    with pytest.raises(ValueError, match=r"record 2 .*'WRJRy'"):
        gr.qpos_dicts_to_arrays(dicts)
    with pytest.raises(ValueError, match=r"record 0 .*'robot0:FFJ3'.*record\['qpos'\]"):
        gr.qpos_dicts_to_arrays([{"qpos": dicts[0], "scale": 0.1}])


def test_arrays_to_qpos_dicts_rejects_mismatched_shapes():
    translation, euler, joints = random_qpos(np.random.default_rng(2), 3)
    with pytest.raises(ValueError, match="joints"):
        gr.arrays_to_qpos_dicts(translation, euler, joints[:2])


@requires_shared_data
def test_real_dexgraspnet_records_round_trip():
    files = sorted((SHARED_DATA / "grasps").glob("*.npy"))
    records = [record["qpos"] for record in load_object_npy(files[0])]
    translation, euler, joints = gr.qpos_dicts_to_arrays(records)
    grasps = gr.grasps_from_dexgraspnet_qpos(translation, euler, joints)
    back = gr.arrays_to_qpos_dicts(*gr.grasps_to_dexgraspnet_qpos(grasps))
    for original, restored in zip(records, back):
        assert restored.keys() == original.keys()
        error = max(abs(restored[k] - original[k]) for k in original)
        assert error < 1e-12


# --- Frames ---------------------------------------------------------------------


@SETTINGS
@given(seeds)
def test_transform_then_inverse_is_identity(seed):
    rng = np.random.default_rng(seed)
    grasps = gr.grasps_from_dexgraspnet_qpos(*random_qpos(rng, 6))
    rotation, translation = random_pose(rng, (6,))
    world = gr.grasps_to_world(grasps, rotation, translation)
    np.testing.assert_allclose(gr.grasps_to_object(world, rotation, translation), grasps, atol=1e-12)
    np.testing.assert_allclose(gr.transform_grasps(world, *gr.invert_pose(rotation, translation)), grasps, atol=1e-12)
    np.testing.assert_array_equal(world[..., gr.JOINTS], grasps[..., gr.JOINTS])


def test_transform_hand_computed_example():
    # Palm 10 cm along the object's x, unrotated; object turned 90 deg about z at (1, 2, 3).
    grasp = gr.make_grasps(np.array([0.1, 0.0, 0.0]), np.eye(3), np.zeros(22))
    world = gr.grasps_to_world(grasp, rz(PI / 2), np.array([1.0, 2.0, 3.0]))
    translation, rotation, _ = gr.split_grasps(world)
    np.testing.assert_allclose(translation, [1.0, 2.1, 3.0], atol=1e-15)
    np.testing.assert_allclose(rotation, rz(PI / 2), atol=1e-15)


def test_transforms_compose():
    rng = np.random.default_rng(3)
    grasps = gr.grasps_from_dexgraspnet_qpos(*random_qpos(rng, 4))
    (r1, t1), (r2, t2) = random_pose(rng), random_pose(rng)
    twice = gr.transform_grasps(gr.transform_grasps(grasps, r1, t1), r2, t2)
    once = gr.transform_grasps(grasps, r2 @ r1, r2 @ t1 + t2)
    np.testing.assert_allclose(twice, once, atol=1e-12)
    # And the palm pose composes as R_B = R R_A, t_B = R t_A + t.
    t_a, r_a, _ = gr.split_grasps(grasps)
    t_b, r_b, _ = gr.split_grasps(gr.transform_grasps(grasps, r1, t1))
    np.testing.assert_allclose(r_b, r1 @ r_a, atol=1e-12)
    np.testing.assert_allclose(t_b, t_a @ r1.T + t1, atol=1e-12)


# --- Wrist qpos -------------------------------------------------------------------


@SETTINGS
@given(seeds)
def test_wrist_qpos_reproduces_palm_pose(seed):
    rng = np.random.default_rng(seed)
    translation, euler, joints = random_qpos(rng, 4)
    rotation = rot.quat_to_matrix(rng.normal(size=(4, 4)))  # any rotation, not only principal
    grasps = gr.make_grasps(translation, rotation, joints)
    wrist = gr.wrist_qpos(grasps)
    assert wrist.shape == (4, 6)
    np.testing.assert_allclose(wrist[:, :3], translation, atol=1e-15)
    for (c, b, a), expected in zip(wrist[:, 3:], rotation):
        # Slides, then hinges z, y, x composed intrinsically.
        np.testing.assert_allclose(rz(c) @ ry(b) @ rx(a), expected, atol=1e-12)
    np.testing.assert_allclose(gr.grasps_from_wrist_qpos(wrist, joints), grasps, atol=1e-12)


def test_wrist_qpos_known_value():
    # sxyz (a, b, c) = (0.1, 0.2, 0.3) -> hinge values (z, y, x) = (0.3, 0.2, 0.1).
    grasp = gr.grasps_from_dexgraspnet_qpos(np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.2, 0.3]), np.zeros(22))
    np.testing.assert_allclose(gr.wrist_qpos(grasp), [1.0, 2.0, 3.0, 0.3, 0.2, 0.1], atol=1e-12)


# --- Joint limits ---------------------------------------------------------------


def test_joint_limit_violation_and_clip():
    low, high = constants.JOINT_RANGES.T
    joints = (low + high) / 2
    joints[0] = 0.5  # FFJ3, range [-0.349, 0.349]
    joints[3] = -0.25  # FFJ0, range [0, 1.571]
    joints[21] = -2.0  # THJ0, range [-1.571, 0]
    grasp = gr.make_grasps(np.array([0.1, 0.2, 0.3]), rz(0.4), joints)
    expected = np.zeros(22)
    expected[[0, 3, 21]] = [0.5 - 0.349, 0.25, 2.0 - 1.571]
    np.testing.assert_allclose(gr.joint_limit_violation(grasp), expected, atol=1e-15)

    clipped = gr.clip_to_joint_limits(grasp)
    np.testing.assert_array_equal(gr.joint_limit_violation(clipped), np.zeros(22))
    np.testing.assert_array_equal(clipped[:9], grasp[:9])
    assert clipped[9 + 0] == 0.349 and clipped[9 + 3] == 0.0 and clipped[9 + 21] == -1.571
    untouched = np.setdiff1d(np.arange(22), [0, 3, 21])
    np.testing.assert_array_equal(clipped[9 + untouched], grasp[9 + untouched])


# --- jax ----------------------------------------------------------------------------


def _pipeline(grasps, rotation, translation):
    """One jitted function covering the jax paths of this module."""
    world = gr.grasps_to_world(grasps, rotation, translation)
    return {
        "world": world,
        "back": gr.grasps_to_object(world, rotation, translation),
        "wrist": gr.wrist_qpos(grasps),
        "euler": gr.grasps_to_dexgraspnet_qpos(grasps)[1],
        "violation": gr.joint_limit_violation(grasps),
        "clipped": gr.clip_to_joint_limits(grasps + 0.5),
    }


def test_jit_vmap_matches_numpy():
    rng = np.random.default_rng(4)
    grasps = gr.grasps_from_dexgraspnet_qpos(*random_qpos(rng, 16))
    rotation, translation = random_pose(rng, (16,))
    f32 = [jnp.asarray(a, jnp.float32) for a in (grasps, rotation, translation)]
    got = jax.jit(jax.vmap(_pipeline))(*f32)
    expected = _pipeline(grasps, rotation, translation)
    for name, value in got.items():
        assert isinstance(value, jax.Array) and value.dtype == jnp.float32, name
        np.testing.assert_allclose(np.asarray(value), expected[name], atol=1e-5, err_msg=name)
