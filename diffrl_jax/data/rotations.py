"""Pure rotation conversions for numpy and jax alike.

Every function computes in numpy (keeping float64 exactly, which file round
trips need) when all its inputs are numpy arrays or Python scalars, and in
`jax.numpy` otherwise, so the same code is jittable, vmappable and
differentiable. Leading batch dimensions `...` are allowed everywhere.

Conventions:
- Rotation matrices `[..., 3, 3]` act on column vectors: x_world = R @ x_local.
- Quaternions `[..., 4]` are in MuJoCo order (w, x, y, z).
- 6D rotations `[..., 6]` are the first two columns of R, concatenated:
  (R00, R10, R20, R01, R11, R21) (Zhou et al. 2019).
- Euler angles `[..., 3]` are transforms3d 'sxyz' (static x, then y, then z),
  DexGraspNet's convention: R = Rz(c) @ Ry(b) @ Rx(a) for (a, b, c).

Inputs are not validated here; that is the I/O layer's job.
"""

import jax
import jax.numpy as jnp
import numpy as np


def array_namespace(*arrays):
    """numpy if no input is a jax array or tracer, else jax.numpy."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def as_float(xp, x):
    x = xp.asarray(x)
    return x if xp.issubdtype(x.dtype, xp.floating) else x.astype(float)


def _norm(xp, v):
    return xp.sqrt(xp.sum(v * v, axis=-1, keepdims=True))


def matrix_to_rot6d(matrix):
    """[..., 3, 3] rotation -> [..., 6] first two columns, concatenated."""
    xp = array_namespace(matrix)
    matrix = as_float(xp, matrix)
    return xp.concatenate([matrix[..., :, 0], matrix[..., :, 1]], axis=-1)


def rot6d_to_matrix(rot6d):
    """[..., 6] -> [..., 3, 3] rotation by Gram-Schmidt.

    Any 6-vector whose two halves are non-zero and not parallel maps to a
    proper rotation, which is why networks predict this representation.
    """
    xp = array_namespace(rot6d)
    rot6d = as_float(xp, rot6d)
    a1, a2 = rot6d[..., 0:3], rot6d[..., 3:6]
    b1 = a1 / _norm(xp, a1)
    b2 = a2 - xp.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = b2 / _norm(xp, b2)
    b3 = xp.cross(b1, b2)
    return xp.stack([b1, b2, b3], axis=-1)


def quat_to_matrix(quat):
    """[..., 4] (w, x, y, z) -> [..., 3, 3] rotation.

    Scales by 2 / |q|^2, so non-unit (non-zero) quaternions are accepted.
    """
    xp = array_namespace(quat)
    quat = as_float(xp, quat)
    w, x, y, z = (quat[..., i] for i in range(4))
    s = 2.0 / xp.sum(quat * quat, axis=-1)
    xx, yy, zz = s * x * x, s * y * y, s * z * z
    xy, xz, yz = s * x * y, s * x * z, s * y * z
    wx, wy, wz = s * w * x, s * w * y, s * w * z
    rows = (
        (1.0 - yy - zz, xy - wz, xz + wy),
        (xy + wz, 1.0 - xx - zz, yz - wx),
        (xz - wy, yz + wx, 1.0 - xx - yy),
    )
    return xp.stack([xp.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quat(matrix):
    """[..., 3, 3] rotation -> [..., 4] unit quaternion (w, x, y, z), w >= 0.

    Shepperd's method: of the four ways to recover q, use the one whose pivot
    (|w|, |x|, |y| or |z|) is largest, so we never divide by a small number.
    All four are computed and the choice is a `where`, to stay jittable.
    """
    xp = array_namespace(matrix)
    m = as_float(xp, matrix)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    # 4 w^2, 4 x^2, 4 y^2, 4 z^2.
    squares = xp.stack(
        [1.0 + trace, 1.0 + 2.0 * m00 - trace, 1.0 + 2.0 * m11 - trace, 1.0 + 2.0 * m22 - trace],
        axis=-1,
    )
    # 2|w|, 2|x|, 2|y|, 2|z|. The squares sum to 4, so the chosen one is >= 1;
    # the floor only keeps unchosen rows (and all gradients) finite.
    pivot = xp.sqrt(xp.maximum(squares, 0.01))
    candidates = xp.stack(
        [
            xp.stack([squares[..., 0], m21 - m12, m02 - m20, m10 - m01], axis=-1),
            xp.stack([m21 - m12, squares[..., 1], m10 + m01, m02 + m20], axis=-1),
            xp.stack([m02 - m20, m10 + m01, squares[..., 2], m12 + m21], axis=-1),
            xp.stack([m10 - m01, m20 + m02, m21 + m12, squares[..., 3]], axis=-1),
        ],
        axis=-2,
    )  # [..., 4, 4], row i = (2 pivot_i) * (+-q)
    candidates = candidates / (2.0 * pivot)[..., None]
    chosen = xp.argmax(pivot, axis=-1)[..., None] == xp.arange(4)
    quat = xp.sum(xp.where(chosen[..., None], candidates, 0.0), axis=-2)
    quat = quat / _norm(xp, quat)
    return xp.where(quat[..., :1] < 0.0, -quat, quat)


def euler_sxyz_to_matrix(euler):
    """[..., 3] 'sxyz' angles (a, b, c) -> [..., 3, 3] R = Rz(c) Ry(b) Rx(a).

    Same numbers as transforms3d.euler.euler2mat(a, b, c, axes='sxyz').
    """
    xp = array_namespace(euler)
    euler = as_float(xp, euler)
    si, sj, sk = (xp.sin(euler[..., i]) for i in range(3))
    ci, cj, ck = (xp.cos(euler[..., i]) for i in range(3))
    cc, cs, sc, ss = ci * ck, ci * sk, si * ck, si * sk
    rows = (
        (cj * ck, sj * sc - cs, sj * cc + ss),
        (cj * sk, sj * ss + cc, sj * cs - sc),
        (-sj, cj * si, cj * ci),
    )
    return xp.stack([xp.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_euler_sxyz(matrix):
    """[..., 3, 3] rotation -> [..., 3] 'sxyz' angles (a, b, c).

    Same numbers as transforms3d.euler.mat2euler(R, axes='sxyz'):
    a, c in [-pi, pi], b in [-pi/2, pi/2]. At gimbal lock (cos b < 4 eps of
    the dtype) only a - c or a + c is defined, and c is set to 0.
    """
    xp = array_namespace(matrix)
    m = as_float(xp, matrix)
    eps = 4.0 * np.finfo(m.dtype).eps
    cy = xp.sqrt(m[..., 0, 0] ** 2 + m[..., 1, 0] ** 2)
    locked = cy <= eps
    b = xp.arctan2(-m[..., 2, 0], cy)
    a = xp.where(
        locked,
        xp.arctan2(-m[..., 1, 2], m[..., 1, 1]),
        xp.arctan2(m[..., 2, 1], m[..., 2, 2]),
    )
    c = xp.where(locked, 0.0, xp.arctan2(m[..., 1, 0], m[..., 0, 0]))
    return xp.stack([a, b, c], axis=-1)


def quat_multiply(q1, q2):
    """Hamilton product [..., 4] x [..., 4] -> [..., 4], so R(q1 q2) = R(q1) R(q2)."""
    xp = array_namespace(q1, q2)
    q1, q2 = as_float(xp, q1), as_float(xp, q2)
    w1, x1, y1, z1 = (q1[..., i] for i in range(4))
    w2, x2, y2, z2 = (q2[..., i] for i in range(4))
    return xp.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )


def quat_conjugate(quat):
    """[..., 4] -> [..., 4] (w, -x, -y, -z), the inverse of a unit quaternion."""
    xp = array_namespace(quat)
    quat = as_float(xp, quat)
    return xp.concatenate([quat[..., :1], -quat[..., 1:]], axis=-1)


def quat_to_euler_sxyz(quat):
    """[..., 4] (w, x, y, z) -> [..., 3] 'sxyz' angles."""
    return matrix_to_euler_sxyz(quat_to_matrix(quat))


def euler_sxyz_to_quat(euler):
    """[..., 3] 'sxyz' angles -> [..., 4] unit quaternion, w >= 0."""
    return matrix_to_quat(euler_sxyz_to_matrix(euler))


def rotation_angle(rotation_a, rotation_b):
    """Geodesic angle in radians, [..., 3, 3] x [..., 3, 3] -> [...], in [0, pi].

    atan2(sin, cos) of the relative rotation instead of arccos of the trace:
    arccos loses half the digits near 0 and has an infinite slope there. The
    clip keeps slightly non-orthonormal (float32) inputs in range; the sin
    norm uses a safe sqrt so the gradient is 0, not NaN, at exactly 0 and pi.
    """
    xp = array_namespace(rotation_a, rotation_b)
    ra, rb = as_float(xp, rotation_a), as_float(xp, rotation_b)
    rel = xp.matmul(xp.swapaxes(ra, -1, -2), rb)
    cos2 = xp.clip(rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2] - 1.0, -2.0, 2.0)
    axis2 = xp.stack(  # 2 sin(theta) * axis
        [rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]],
        axis=-1,
    )
    sq = xp.sum(axis2 * axis2, axis=-1)
    positive = sq > 0.0
    sin2 = xp.where(positive, xp.sqrt(xp.where(positive, sq, 1.0)), 0.0)
    return xp.arctan2(sin2, cos2)


def rotvec_to_matrix(rotvec):
    """[..., 3] rotation vector (axis * angle, rad) -> [..., 3, 3] by Rodrigues.

    Uses the Taylor series of sin(t)/t and (1 - cos t)/t^2 below 1e-4 rad so
    the result and its gradient stay finite at zero.
    """
    xp = array_namespace(rotvec)
    v = as_float(xp, rotvec)
    t2 = xp.sum(v * v, axis=-1)[..., None, None]
    small = t2 < 1e-8
    t2s = xp.where(small, 1.0, t2)
    t = xp.sqrt(t2s)
    a = xp.where(small, 1.0 - t2 / 6.0, xp.sin(t) / t)
    b = xp.where(small, 0.5 - t2 / 24.0, (1.0 - xp.cos(t)) / t2s)
    zero = xp.zeros_like(v[..., 0])
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    k = xp.stack([xp.stack([zero, -z, y], -1), xp.stack([z, zero, -x], -1),
                  xp.stack([-y, x, zero], -1)], -2)
    eye = xp.broadcast_to(xp.eye(3, dtype=k.dtype), k.shape)
    return eye + a * k + b * xp.matmul(k, k)
