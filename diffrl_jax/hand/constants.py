"""Names and limits of the ShadowHand as DexGraspNet uses it.

Facts from DexGraspNet's `shadow_hand_wrist_free.xml` (see
`../shared/reference/`). Kept in their own module so data code can use them
without building a MuJoCo model.
"""

import numpy as np

# The 22 finger joints, in DexGraspNet's order (and the kinematic tree's).
JOINT_NAMES: tuple[str, ...] = (
    "robot0:FFJ3", "robot0:FFJ2", "robot0:FFJ1", "robot0:FFJ0",
    "robot0:MFJ3", "robot0:MFJ2", "robot0:MFJ1", "robot0:MFJ0",
    "robot0:RFJ3", "robot0:RFJ2", "robot0:RFJ1", "robot0:RFJ0",
    "robot0:LFJ4", "robot0:LFJ3", "robot0:LFJ2", "robot0:LFJ1", "robot0:LFJ0",
    "robot0:THJ4", "robot0:THJ3", "robot0:THJ2", "robot0:THJ1", "robot0:THJ0",
)
NUM_JOINTS = len(JOINT_NAMES)

# [22, 2] lower/upper limits in radians, same order as JOINT_NAMES.
_FINGER = ((-0.349, 0.349), (0.0, 1.571), (0.0, 1.571), (0.0, 1.571))
JOINT_RANGES = np.array(
    _FINGER * 3
    + ((0.0, 0.785),) + _FINGER
    + ((-1.047, 1.047), (0.0, 1.222), (-0.209, 0.209), (-0.524, 0.524), (-1.571, 0.0)),
    dtype=np.float64,
)

# DexGraspNet's wrist keys: palm root translation (m) and 'sxyz' Euler (rad),
# both in the object frame.
WRIST_TRANSLATION_KEYS: tuple[str, ...] = ("WRJTx", "WRJTy", "WRJTz")
WRIST_EULER_KEYS: tuple[str, ...] = ("WRJRx", "WRJRy", "WRJRz")
QPOS_KEYS: tuple[str, ...] = JOINT_NAMES + WRIST_EULER_KEYS + WRIST_TRANSLATION_KEYS

ROOT_BODY = "robot0:palm"
# Distal phalanx collision geoms, thumb last.
FINGERTIP_GEOMS: tuple[str, ...] = (
    "robot0:C_ffdistal", "robot0:C_mfdistal", "robot0:C_rfdistal",
    "robot0:C_lfdistal", "robot0:C_thdistal",
)
FINGERTIP_SITES: tuple[str, ...] = (
    "robot0:S_fftip", "robot0:S_mftip", "robot0:S_rftip",
    "robot0:S_lftip", "robot0:S_thtip",
)
