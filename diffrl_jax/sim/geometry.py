"""Hand-object geometry of grasps, measured with MuJoCo's C engine.

Host-side (not jittable): it loops over grasps with `mj_kinematics` and
`mj_geomDistance`, which gives exact signed distances between the hand's
collision primitives and the object's convex pieces -- the shapes the
simulator collides. It is the reference that frame conventions are checked
against, not a training-time function.
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.scene import Scene

# Beyond this, a fingertip's distance is reported as this value (m).
_MAX_DISTANCE = 1.0


def hand_qpos(grasps: np.ndarray) -> np.ndarray:
    """Object-frame grasps [N, 31] -> the hand's qpos [N, 28] (wrist 6, joints 22)."""
    grasps = np.asarray(grasps, dtype=np.float64)
    return np.concatenate([grasp_lib.wrist_qpos(grasps), grasps[..., grasp_lib.JOINTS]], axis=-1)


@dataclasses.dataclass(frozen=True)
class GraspGeometry:
    """Per-grasp geometry in metres.

    fingertip_distance: [N, 5] signed distance of each distal phalanx capsule
      (thumb last) to the object; negative inside.
    penetration: [N] deepest hand-object interpenetration (>= 0).
    """

    fingertip_distance: np.ndarray
    penetration: np.ndarray


def min_distance(model, data, geoms, object_geoms, distmax: float, fromto: np.ndarray) -> float:
    """Smallest signed distance (m) between any of `geoms` and any of `object_geoms`.

    Uses the poses in `data` (run `mj_kinematics` first); distances beyond
    `distmax` come back as `distmax`. `fromto` is a scratch buffer of 6.
    """
    return min(
        mujoco.mj_geomDistance(model, data, g, o, distmax, fromto)
        for g in geoms for o in object_geoms
    )


def measure_grasps(scene: Scene, grasps: np.ndarray) -> GraspGeometry:
    """Places the hand at each object-frame grasp [N, 31] and measures it.

    The object stays at its reset pose (object frame = world frame).
    """
    model = scene.model
    data = mujoco.MjData(model)
    qpos = hand_qpos(grasps)
    fromto = np.zeros(6)
    n = len(qpos)
    tips = np.empty((n, len(scene.fingertip_geoms)))
    penetration = np.empty(n)
    data.qpos[:] = model.qpos0
    for i in range(n):
        data.qpos[scene.hand_qpos] = qpos[i]
        mujoco.mj_kinematics(model, data)
        for k, g in enumerate(scene.fingertip_geoms):
            tips[i, k] = min_distance(model, data, [g], scene.object_geoms, _MAX_DISTANCE, fromto)
        # A small distmax: only overlap matters here, and it is cheaper.
        penetration[i] = max(
            0.0, -min_distance(model, data, scene.hand_geoms, scene.object_geoms, 1e-3, fromto))
    return GraspGeometry(fingertip_distance=tips, penetration=penetration)
