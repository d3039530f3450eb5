"""Named poses and paths of the ShadowHand's fingers, shared by grasp makers and the lift.

Per finger: its joints, its open pose and a fixed flexion direction; a finger
closes along `open + s * direction` for s in [0, FINGER_CLOSE_MAX]. The
example dataset closes each finger that way until it touches, the proposal
generator drives the servos from `OPEN_POSE` to `CLOSED_POSE`, and the lift's
pre-grasp opens the fingers towards `OPEN_POSE`.
"""

from __future__ import annotations

import numpy as np

from diffrl_jax.hand import constants

JOINT_INDEX = {name: i for i, name in enumerate(constants.JOINT_NAMES)}
# Per finger: joint names, open pose, closing direction (rad per unit of s).
FINGERS = {
    "ff": (["robot0:FFJ3", "robot0:FFJ2", "robot0:FFJ1", "robot0:FFJ0"], [0, 0, 0, 0], [0, 0.6, 1.0, 0.5]),
    "mf": (["robot0:MFJ3", "robot0:MFJ2", "robot0:MFJ1", "robot0:MFJ0"], [0, 0, 0, 0], [0, 0.6, 1.0, 0.5]),
    "rf": (["robot0:RFJ3", "robot0:RFJ2", "robot0:RFJ1", "robot0:RFJ0"], [0, 0, 0, 0], [0, 0.6, 1.0, 0.5]),
    "lf": (["robot0:LFJ4", "robot0:LFJ3", "robot0:LFJ2", "robot0:LFJ1", "robot0:LFJ0"],
           [0.3, 0, 0, 0, 0], [0, 0, 0.6, 1.0, 0.5]),
    "th": (["robot0:THJ4", "robot0:THJ3", "robot0:THJ2", "robot0:THJ1", "robot0:THJ0"],
           [0.3, 0.6, 0, 0, 0], [0, 0.4, 0, -0.35, -0.5]),
}
FINGER_CLOSE_MAX = 1.5
PALM_CENTRE = np.array([0.011, -0.0111, 0.045])  # on the palm's inner face, local frame


def _poses() -> tuple[np.ndarray, np.ndarray]:
    open_pose = np.zeros(constants.NUM_JOINTS)
    closed = np.zeros(constants.NUM_JOINTS)
    for names, start, direction in FINGERS.values():
        idx = [JOINT_INDEX[name] for name in names]
        open_pose[idx] = start
        closed[idx] = np.asarray(start) + FINGER_CLOSE_MAX * np.asarray(direction)
    return open_pose, np.clip(closed, constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1])


# The 22 finger joints open (fingers straight, thumb abducted) and fully closed
# along each finger's path (within the joint limits).
OPEN_POSE, CLOSED_POSE = _poses()


def finger_geoms(scene) -> dict[str, list[int]]:
    """{finger: the hand geoms of its links} of a scene built by `scene.build_scene`."""
    model = scene.model
    return {finger: [g for g in scene.hand_geoms if model.geom(g).name.startswith(f"robot0:C_{finger}")]
            for finger in FINGERS}
