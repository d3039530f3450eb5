"""Rotation conversions: conventions, round trips, numpy/jax parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from diffrl_jax.data import rotations as rot

from _elementary import rx, ry, rz

PI = np.pi
SETTINGS = settings(max_examples=50, deadline=None)


def wrap(angle):
    return (angle + PI) % (2 * PI) - PI


def assert_rotation(matrix, atol=1e-12):
    matrix = np.asarray(matrix, dtype=np.float64)
    identity = np.broadcast_to(np.eye(3), matrix.shape)
    np.testing.assert_allclose(matrix @ np.swapaxes(matrix, -1, -2), identity, atol=atol)
    np.testing.assert_allclose(np.linalg.det(matrix), 1.0, atol=atol)


angle = st.floats(-2 * PI, 2 * PI, allow_nan=False)
principal_angle = st.floats(-PI, PI, allow_nan=False)
# Away from gimbal lock, where a and c are ill-conditioned.
principal_pitch = st.floats(-PI / 2 + 0.01, PI / 2 - 0.01, allow_nan=False)
quaternion = st.tuples(*[st.floats(-1, 1, allow_nan=False)] * 4).map(np.array).filter(
    lambda q: np.linalg.norm(q) > 0.1
)


# --- Euler 'sxyz' -----------------------------------------------------------


@SETTINGS
@given(angle, angle, angle)
def test_euler_is_product_of_elementary_rotations(a, b, c):
    expected = rz(c) @ ry(b) @ rx(a)
    np.testing.assert_allclose(rot.euler_sxyz_to_matrix(np.array([a, b, c])), expected, atol=1e-14)


def test_euler_known_values():
    # sxyz (pi/2, 0, 0) is a quarter turn about x: y -> z.
    np.testing.assert_allclose(rot.euler_sxyz_to_matrix([PI / 2, 0, 0]) @ [0, 1, 0], [0, 0, 1], atol=1e-15)
    # (0, 0, pi/2) is a quarter turn about z: x -> y.
    np.testing.assert_allclose(rot.euler_sxyz_to_matrix([0, 0, PI / 2]) @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    # Static axes: x first, then z. x-turn sends y to z, z-turn leaves z alone.
    np.testing.assert_allclose(rot.euler_sxyz_to_matrix([PI / 2, 0, PI / 2]) @ [0, 1, 0], [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(
        rot.matrix_to_euler_sxyz(rz(0.3) @ ry(-0.2) @ rx(1.1)), [1.1, -0.2, 0.3], atol=1e-15
    )


@SETTINGS
@given(principal_angle, principal_pitch, principal_angle)
def test_euler_round_trip_in_principal_range(a, b, c):
    euler = np.array([a, b, c])
    back = rot.matrix_to_euler_sxyz(rot.euler_sxyz_to_matrix(euler))
    assert back.dtype == np.float64
    assert -PI / 2 <= back[1] <= PI / 2
    np.testing.assert_allclose(wrap(back - euler), 0.0, atol=1e-12)


@SETTINGS
@given(quaternion)
@example(np.array([0.0, 0.75, 5.960464477539063e-08, 0.75]))  # cos b = 8e-8 (found by CI)
def test_matrix_euler_matrix_round_trip(q):
    matrix = rot.quat_to_matrix(q)
    back = rot.euler_sxyz_to_matrix(rot.matrix_to_euler_sxyz(matrix))
    # Near gimbal lock a and c come from entries of size cos b, so each is
    # known only to about eps / cos b, and so are the entries they rebuild
    # (8e-8 from the lock: 1.4e-9). At the lock itself the round trip is
    # exact again (test_gimbal_lock_round_trips_as_matrix).
    eps = np.finfo(np.float64).eps
    cos_b = np.hypot(matrix[0, 0], matrix[1, 0])
    conditioning = 4 * eps / cos_b if cos_b > 4 * eps else 0.0
    np.testing.assert_allclose(back, matrix, atol=1e-12 + conditioning)


@SETTINGS
@given(angle, st.sampled_from([PI / 2, -PI / 2]), angle)
def test_gimbal_lock_round_trips_as_matrix(a, b, c):
    matrix = rot.euler_sxyz_to_matrix(np.array([a, b, c]))
    euler = rot.matrix_to_euler_sxyz(matrix)
    assert euler[2] == 0.0  # transforms3d's choice at the lock
    np.testing.assert_allclose(euler[1], b, atol=1e-7)
    np.testing.assert_allclose(rot.euler_sxyz_to_matrix(euler), matrix, atol=1e-12)


# --- Quaternions -------------------------------------------------------------


@SETTINGS
@given(quaternion)
def test_quat_matrix_round_trip(q):
    unit = q / np.linalg.norm(q)
    matrix = rot.quat_to_matrix(q)
    assert_rotation(matrix)
    back = rot.matrix_to_quat(matrix)
    np.testing.assert_allclose(np.linalg.norm(back), 1.0, atol=1e-14)
    assert back[0] >= 0.0
    # q and -q are the same rotation.
    sign = 1.0 if back @ unit >= 0 else -1.0
    np.testing.assert_allclose(back, sign * unit, atol=1e-12)
    np.testing.assert_allclose(rot.quat_to_matrix(back), matrix, atol=1e-12)


@pytest.mark.parametrize(
    "matrix",
    [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0]),
     rx(PI - 1e-9), ry(PI - 1e-9) @ rz(0.1)],
    ids=["identity", "x-flip", "y-flip", "z-flip", "near-pi-x", "near-pi-y"],
)
def test_matrix_to_quat_each_shepperd_branch(matrix):
    q = rot.matrix_to_quat(matrix)
    assert np.all(np.isfinite(q))
    np.testing.assert_allclose(rot.quat_to_matrix(q), matrix, atol=1e-12)


@SETTINGS
@given(quaternion, quaternion)
def test_quat_multiply_matches_matrix_product(q1, q2):
    product = rot.quat_to_matrix(rot.quat_multiply(q1, q2))
    np.testing.assert_allclose(product, rot.quat_to_matrix(q1) @ rot.quat_to_matrix(q2), atol=1e-12)
    inverse = rot.quat_to_matrix(rot.quat_conjugate(q1))
    np.testing.assert_allclose(inverse @ rot.quat_to_matrix(q1), np.eye(3), atol=1e-12)


@SETTINGS
@given(principal_angle, principal_pitch, principal_angle)
def test_quat_euler_compose(a, b, c):
    euler = np.array([a, b, c])
    q = rot.euler_sxyz_to_quat(euler)
    np.testing.assert_allclose(rot.quat_to_matrix(q), rz(c) @ ry(b) @ rx(a), atol=1e-12)
    np.testing.assert_allclose(wrap(rot.quat_to_euler_sxyz(q) - euler), 0.0, atol=1e-12)


# --- 6D ------------------------------------------------------------------


@SETTINGS
@given(quaternion)
def test_rot6d_round_trip(q):
    matrix = rot.quat_to_matrix(q)
    rot6d = rot.matrix_to_rot6d(matrix)
    np.testing.assert_array_equal(rot6d, [*matrix[:, 0], *matrix[:, 1]])
    np.testing.assert_allclose(rot.rot6d_to_matrix(rot6d), matrix, atol=1e-12)


@SETTINGS
@given(st.tuples(*[st.floats(-10, 10, allow_nan=False)] * 6).map(np.array))
def test_rot6d_of_any_6_vector_is_a_rotation(v):
    a1, a2 = v[:3], v[3:]
    # Non-degenerate: both halves long enough and not (nearly) parallel.
    if np.linalg.norm(a1) < 1e-3 or np.linalg.norm(np.cross(a1, a2)) < 1e-3 * np.linalg.norm(a2) + 1e-6:
        return
    matrix = rot.rot6d_to_matrix(v)
    assert_rotation(matrix, atol=1e-10)
    # Gram-Schmidt keeps the first column's direction.
    np.testing.assert_allclose(matrix[:, 0], a1 / np.linalg.norm(a1), atol=1e-12)


# --- Geodesic angle -------------------------------------------------------


@pytest.mark.parametrize("theta", [0.0, 1e-9, 1e-4, 0.5, 2.0, PI - 1e-6, PI])
def test_rotation_angle(theta):
    base = rot.euler_sxyz_to_matrix([0.3, -0.7, 2.0])
    axis_turn = rot.quat_to_matrix([np.cos(theta / 2), *(np.sin(theta / 2) * np.array([1, 2, 2]) / 3)])
    assert rot.rotation_angle(base, base @ axis_turn) == pytest.approx(theta, abs=1e-12)
    assert rot.rotation_angle(base @ axis_turn, base) == pytest.approx(theta, abs=1e-12)


def test_rotation_angle_is_batched():
    a = rot.euler_sxyz_to_matrix(np.zeros((4, 5, 3)))
    b = rot.euler_sxyz_to_matrix(np.broadcast_to([0.0, 0.0, 0.25], (4, 5, 3)))
    np.testing.assert_allclose(rot.rotation_angle(a, b), np.full((4, 5), 0.25), atol=1e-14)


# --- numpy / jax -------------------------------------------------------------


def test_numpy_in_numpy_out_keeps_dtype():
    euler = np.array([[0.1, 0.2, 0.3]])
    for dtype in (np.float64, np.float32):
        matrix = rot.euler_sxyz_to_matrix(euler.astype(dtype))
        outputs = [matrix, rot.matrix_to_quat(matrix), rot.matrix_to_rot6d(matrix),
                   rot.rot6d_to_matrix(rot.matrix_to_rot6d(matrix)), rot.matrix_to_euler_sxyz(matrix)]
        for out in outputs:
            assert isinstance(out, np.ndarray) and out.dtype == dtype


def _all_round_trips(euler):
    """euler [3] -> everything the numpy reference is compared with."""
    matrix = rot.euler_sxyz_to_matrix(euler)
    quat = rot.matrix_to_quat(matrix)
    return {
        "matrix": matrix,
        "euler": rot.matrix_to_euler_sxyz(matrix),
        "quat": quat,
        "from_quat": rot.quat_to_matrix(quat),
        "from_6d": rot.rot6d_to_matrix(rot.matrix_to_rot6d(matrix)),
        "angle": rot.rotation_angle(matrix, rot.quat_to_matrix(rot.quat_multiply(quat, quat))),
    }


def test_jit_vmap_matches_numpy():
    rng = np.random.default_rng(0)
    # Principal ranges, pitch away from the lock; includes all Shepperd branches.
    euler = np.stack(
        [rng.uniform(-3.1, 3.1, 64), rng.uniform(-1.5, 1.5, 64), rng.uniform(-3.1, 3.1, 64)], axis=-1
    )
    got = jax.jit(jax.vmap(_all_round_trips))(jnp.asarray(euler, jnp.float32))
    expected = _all_round_trips(euler)
    for name, value in got.items():
        assert isinstance(value, jax.Array) and value.dtype == jnp.float32, name
        np.testing.assert_allclose(np.asarray(value), expected[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(got["euler"]), euler, atol=1e-5)


def test_gradients_are_finite_at_identity():
    def loss(euler):
        matrix = rot.euler_sxyz_to_matrix(euler)
        return rot.rotation_angle(jnp.eye(3), matrix) + jnp.sum(rot.matrix_to_quat(matrix))

    grad = jax.grad(loss)(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_rotvec_to_matrix_matches_scipy_and_is_smooth_at_zero():
    import jax
    import jax.numpy as jnp
    from scipy.spatial.transform import Rotation

    v = np.random.default_rng(0).normal(size=(16, 3))
    np.testing.assert_allclose(rot.rotvec_to_matrix(v), Rotation.from_rotvec(v).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(rot.rotvec_to_matrix(np.zeros(3)), np.eye(3), atol=0)
    grad = jax.grad(lambda x: rot.rotvec_to_matrix(x)[0, 1])(jnp.zeros(3))
    assert bool(jnp.isfinite(grad).all())
    np.testing.assert_allclose(np.asarray(grad), [0, 0, -1], atol=1e-6)
