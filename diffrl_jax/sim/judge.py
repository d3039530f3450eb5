"""What both engines measure and how a hold or a lift is judged, written once.

The MJX functions (`hold`, `lift`) and the MuJoCo-C ones (`mujoco_backend`,
`lift_mujoco`) read the same quantities from their states and apply the
same rules through these functions; each takes numpy or jax arrays and
answers in kind, so the two backends cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from diffrl_jax.data.rotations import array_namespace


def object_in_palm(palm_pos, palm_mat, object_com, object_mat):
    """The object's COM [3] and rotation [3, 3] in the palm's frame.

    palm_pos [3], palm_mat [3, 3]: the palm body's world pose; object_com [3]
    (the object's centre of mass, `xipos`), object_mat [3, 3]: the object body's.
    """
    return palm_mat.T @ (object_com - palm_pos), palm_mat.T @ object_mat


def geom_mask(ngeom: int, geoms) -> np.ndarray:
    """[ngeom] bool, True at `geoms`."""
    mask = np.zeros(ngeom, bool)
    mask[np.asarray(geoms, int)] = True
    return mask


def hand_object_pairs(geom1, geom2, is_object, is_hand=None):
    """[C] bool: contact c is between the hand and the object.

    With `is_hand` None every geom that is not the object's counts as the
    hand's (the hold scene has nothing else); with a table, pass the hand's mask.
    """
    if is_hand is None:
        return is_object[geom1] ^ is_object[geom2]
    return (is_object[geom1] & is_hand[geom2]) | (is_hand[geom1] & is_object[geom2])


def touching(dist, pairs):
    """Some hand-object contact penetrates (distance < 0)."""
    xp = array_namespace(dist, pairs)
    return xp.any(pairs & (dist < 0))


def penetration_mm(dist, pairs=None):
    """The deepest penetration (mm, >= 0) among the contacts `pairs` (all when None)."""
    xp = array_namespace(dist)
    if pairs is not None:
        dist = xp.where(pairs, dist, xp.inf)
    if dist.shape[-1] == 0:
        return xp.zeros(dist.shape[:-1])
    return xp.maximum(-xp.min(dist, axis=-1), 0.0) * 1000.0


def held(protocol, finite, translation, rotation, penetration, contact):
    """[..., D] bool: the directions a grasp holds under the hold protocol.

    finite, translation (m), rotation (rad), contact: [..., D] per pull
    direction; penetration [...] (mm) at placement, NaN where never placed.
    """
    xp = array_namespace(finite, translation, rotation, penetration, contact)
    with np.errstate(invalid="ignore"):
        placed = penetration <= protocol.penetration_bound_m * 1000.0  # NaN: not placed
    ok = (finite & (translation < protocol.translation_bound_m)
          & (rotation < protocol.rotation_bound_rad) & placed[..., None])
    if protocol.require_contact:
        ok = ok & contact
    return xp.asarray(ok)


def lifted(protocol, finite, lift_height, slip):
    """[...] bool: the lift succeeded (rose enough, slipped little, stayed finite)."""
    return finite & (lift_height >= protocol.success_height_m) & (slip < protocol.slip_bound_m)
