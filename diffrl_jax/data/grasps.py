"""The canonical grasp array and conversions to and from it.

A grasp is `[31] = [translation 3, rot6d 6, joints 22]` in the OBJECT frame:
translation and rotation place the hand's root body `robot0:palm` in the
object frame (DexGraspNet's WRJT*/WRJR*), and the joints are the 22 finger
joints in `constants.JOINT_NAMES` order. 6D rotation keeps the array
continuous, so networks can regress it.

Like `rotations`, every array function runs in numpy (float64 exact) on numpy
inputs and in jax.numpy on jax inputs; leading batch dims `...` are allowed.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from diffrl_jax.data import rotations
from diffrl_jax.data.rotations import as_float, array_namespace
from diffrl_jax.hand import constants

GRASP_DIM = 31
TRANSLATION = slice(0, 3)
ROT6D = slice(3, 9)
JOINTS = slice(9, 31)


def make_grasps(translation, rotation, joints):
    """[..., 3], [..., 3, 3], [..., 22] -> [..., 31]; batch dims broadcast."""
    xp = array_namespace(translation, rotation, joints)
    translation, rotation, joints = (as_float(xp, a) for a in (translation, rotation, joints))
    rot6d = rotations.matrix_to_rot6d(rotation)
    batch = xp.broadcast_shapes(translation.shape[:-1], rot6d.shape[:-1], joints.shape[:-1])
    parts = [xp.broadcast_to(a, batch + a.shape[-1:]) for a in (translation, rot6d, joints)]
    return xp.concatenate(parts, axis=-1)


def split_grasps(grasps):
    """[..., 31] -> (translation [..., 3], rotation [..., 3, 3], joints [..., 22])."""
    xp = array_namespace(grasps)
    grasps = as_float(xp, grasps)
    return (
        grasps[..., TRANSLATION],
        rotations.rot6d_to_matrix(grasps[..., ROT6D]),
        grasps[..., JOINTS],
    )


def grasps_from_dexgraspnet_qpos(translation, euler_sxyz, joints):
    """DexGraspNet's WRJT [..., 3], WRJR 'sxyz' [..., 3], joints [..., 22] -> [..., 31]."""
    return make_grasps(translation, rotations.euler_sxyz_to_matrix(euler_sxyz), joints)


def grasps_to_dexgraspnet_qpos(grasps):
    """[..., 31] -> (WRJT [..., 3], WRJR 'sxyz' [..., 3], joints [..., 22]).

    Euler angles come back in transforms3d's principal ranges, so they equal
    the input of `grasps_from_dexgraspnet_qpos` only if it was in them too.
    """
    translation, rotation, joints = split_grasps(grasps)
    return translation, rotations.matrix_to_euler_sxyz(rotation), joints


def qpos_dicts_to_arrays(records: Sequence[Mapping[str, float]]):
    """DexGraspNet `qpos` dicts -> float64 numpy (translation [N, 3], euler [N, 3], joints [N, 22]).

    Keys beyond `constants.QPOS_KEYS` are ignored. Raises ValueError naming
    the first record and key that is missing.
    """
    keys = constants.QPOS_KEYS
    try:  # fast path; the slow search below only runs to word the error
        rows = [[record[key] for key in keys] for record in records]
    except KeyError:
        raise ValueError(_missing_key_message(records)) from None
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(keys))
    joints = values[:, : constants.NUM_JOINTS]
    euler = values[:, constants.NUM_JOINTS : constants.NUM_JOINTS + 3]
    translation = values[:, constants.NUM_JOINTS + 3 :]
    return translation, euler, joints


def _missing_key_message(records) -> str:
    for index, record in enumerate(records):
        for key in constants.QPOS_KEYS:
            if key not in record:
                hint = " (pass record['qpos'], not the whole record)" if "qpos" in record else ""
                return f"qpos record {index} is missing key {key!r}{hint}"
    return "a qpos record is missing a key"


def arrays_to_qpos_dicts(translation, euler_sxyz, joints) -> list[dict[str, float]]:
    """translation [N, 3], euler [N, 3], joints [N, 22] -> N dicts of Python floats.

    Keys follow `constants.QPOS_KEYS` (joints, WRJRx..z, WRJTx..z), the order
    of DexGraspNet's files.
    """
    translation, euler_sxyz, joints = (
        np.asarray(a, dtype=np.float64) for a in (translation, euler_sxyz, joints)
    )
    n = len(translation)
    expected = {"translation": (n, 3), "euler_sxyz": (n, 3), "joints": (n, constants.NUM_JOINTS)}
    for name, array in zip(expected, (translation, euler_sxyz, joints)):
        if array.shape != expected[name]:
            raise ValueError(f"{name} has shape {array.shape}, expected {expected[name]}")
    values = np.concatenate([joints, euler_sxyz, translation], axis=-1)
    # tolist() gives exact Python floats; zip follows QPOS_KEYS order.
    return [dict(zip(constants.QPOS_KEYS, row)) for row in values.tolist()]


def invert_pose(rotation, translation):
    """Pose of A in B [..., 3, 3], [..., 3] -> pose of B in A: (R^T, -R^T t)."""
    xp = array_namespace(rotation, translation)
    rotation, translation = as_float(xp, rotation), as_float(xp, translation)
    inverse = xp.swapaxes(rotation, -1, -2)
    return inverse, -xp.matmul(inverse, translation[..., None])[..., 0]


def transform_grasps(grasps, rotation, translation):
    """Re-express grasps [..., 31] given in frame A in frame B.

    (rotation [..., 3, 3], translation [..., 3]) is the pose of A in B, so the
    palm pose composes as R_B = R @ R_A, t_B = R @ t_A + t. The two rot6d
    columns are rotated directly, which skips Gram-Schmidt and keeps them
    exactly as given up to rounding. Joints are unchanged.
    """
    xp = array_namespace(grasps, rotation, translation)
    grasps, rotation, translation = (as_float(xp, a) for a in (grasps, rotation, translation))
    columns = xp.stack([grasps[..., 3:6], grasps[..., 6:9]], axis=-1)  # [..., 3, 2]
    columns = xp.matmul(rotation, columns)
    new_translation = xp.matmul(rotation, grasps[..., TRANSLATION, None])[..., 0] + translation
    batch = xp.broadcast_shapes(new_translation.shape[:-1], columns.shape[:-2], grasps.shape[:-1])
    parts = (
        new_translation,
        columns[..., 0],
        columns[..., 1],
        grasps[..., JOINTS],
    )
    return xp.concatenate([xp.broadcast_to(a, batch + a.shape[-1:]) for a in parts], axis=-1)


def grasps_to_world(grasps, object_rotation, object_position):
    """Object-frame grasps [..., 31] -> world frame, given the object's world pose."""
    return transform_grasps(grasps, object_rotation, object_position)


def grasps_to_object(grasps, object_rotation, object_position):
    """World-frame grasps [..., 31] -> object frame, given the object's world pose."""
    return transform_grasps(grasps, *invert_pose(object_rotation, object_position))


def wrist_qpos(grasps):
    """[..., 31] -> [..., 6] the hand model's wrist joint values.

    The palm body carries slide x, y, z (world axes), then hinges z, y, x.
    MuJoCo composes a body's hinges intrinsically, so R = Rz(c) Ry(b) Rx(a),
    which is exactly 'sxyz' (a, b, c); the hinge values are thus (c, b, a).
    """
    xp = array_namespace(grasps)
    translation, rotation, _ = split_grasps(grasps)
    euler = rotations.matrix_to_euler_sxyz(rotation)
    return xp.concatenate([translation, euler[..., ::-1]], axis=-1)


def grasps_from_wrist_qpos(wrist, joints):
    """Wrist joint values [..., 6] (tx, ty, tz, c, b, a), joints [..., 22] -> [..., 31]."""
    xp = array_namespace(wrist, joints)
    wrist = as_float(xp, wrist)
    return grasps_from_dexgraspnet_qpos(wrist[..., :3], wrist[..., 3:][..., ::-1], joints)


def clip_to_joint_limits(grasps):
    """[..., 31] -> [..., 31] with joints clipped to `constants.JOINT_RANGES`."""
    xp = array_namespace(grasps)
    grasps = as_float(xp, grasps)
    low, high = constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1]
    joints = xp.clip(grasps[..., JOINTS], low.astype(grasps.dtype), high.astype(grasps.dtype))
    return xp.concatenate([grasps[..., :JOINTS.start], joints], axis=-1)


def joint_limit_violation(grasps):
    """[..., 31] -> [..., 22] radians outside `constants.JOINT_RANGES`, 0 inside."""
    xp = array_namespace(grasps)
    grasps = as_float(xp, grasps)
    joints = grasps[..., JOINTS]
    low = constants.JOINT_RANGES[:, 0].astype(grasps.dtype)
    high = constants.JOINT_RANGES[:, 1].astype(grasps.dtype)
    return xp.maximum(low - joints, 0.0) + xp.maximum(joints - high, 0.0)
