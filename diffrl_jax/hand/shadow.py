"""The project's ShadowHand, built with `mujoco.MjSpec` from DexGraspNet's facts.

The kinematic tree (rooted at `robot0:palm`), body offsets, joint axes and
ranges, and collision primitives are those of DexGraspNet's
`shadow_hand_wrist_free.xml`, so a DexGraspNet grasp (palm pose in the object
frame + 22 joint angles) puts this hand exactly where DexGraspNet put its own.

What we add, and why:
- A 6-DoF actuated wrist on the palm: slides x, y, z (world axes), then hinges
    z, y, x composed intrinsically, so R = Rz(c) Ry(b) Rx(a) -- DexGraspNet's
    static 'sxyz' Euler -- and the wrist joints equal the dataset's WRJT*/WRJR*.
    Stiff position servos hold the hand still, approach and lift.
- One position actuator per finger joint (22). DexGraspNet's hand has no
    coupling tendons (its grasps set J1 and J0 independently), so neither do we.
    Torque limits are the reference model's per-joint force ranges (J0 takes J1's).
- Gravity compensation on the hand (configurable): the wrist servo then holds
    the pose without a steady-state sag.
- Collision geometry is the reference's primitives only (palm boxes, finger
    capsules); visual geometry is the same primitives.
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants

# Contact bitmasks shared with objects and scenes.
HAND_BIT = 1
OBJECT_BIT = 2
TABLE_BIT = 4

WRIST_JOINT_NAMES: tuple[str, ...] = (
        "robot0:WRJTx", "robot0:WRJTy", "robot0:WRJTz",
        "robot0:WRJRz", "robot0:WRJRy", "robot0:WRJRx",
)
_WRIST_AXES = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1), (0, 1, 0), (1, 0, 0))


@dataclasses.dataclass(frozen=True)
class HandConfig:
    """Physical parameters of the hand; every number a user may override."""

    finger_kp: float = 3.0  # N m / rad, position servo stiffness of finger joints
    strength: float = 1.0  # multiplies every finger torque limit
    finger_damping: float = 0.1  # N m s / rad (reference)
    finger_armature: float = 0.001  # kg m^2 (reference)
    wrist_kp_translation: float = 5000.0  # N / m
    wrist_kp_rotation: float = 100.0  # N m / rad
    wrist_force_limit: float = 200.0  # N
    wrist_torque_limit: float = 20.0  # N m
    wrist_damping_translation: float = 100.0  # N s / m
    wrist_damping_rotation: float = 5.0  # N m s / rad
    wrist_armature_translation: float = 0.1  # kg
    wrist_armature_rotation: float = 0.01  # kg m^2
    gravity_compensation: bool = True
    friction: tuple[float, float, float] = (1.0, 0.005, 0.0001)
    condim: int = 3
    rgba: tuple[float, float, float, float] = (0.85, 0.75, 0.65, 1.0)


# Reference per-joint torque limits (N m), JOINT_NAMES order. The reference
# drives J0 through the J1 tendon (0.7245 N m); we give J0 the same limit.
_FINGER_LIMITS = (0.9, 0.9, 0.7245, 0.7245)
FINGER_TORQUE_LIMITS = np.array(
        _FINGER_LIMITS * 3 + (0.9,) + _FINGER_LIMITS + (2.3722, 1.45, 0.99, 0.99, 0.81)
)


@dataclasses.dataclass(frozen=True)
class _Geom:
    name: str
    type: str  # "box" | "capsule"
    size: tuple[float, ...]
    pos: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class _Body:
    name: str
    pos: tuple[float, float, float]
    mass: float
    ipos: tuple[float, float, float]
    inertia: float  # isotropic diagonal inertia (the reference uses 1e-5 / 1e-3)
    joint: tuple[str, tuple[float, float, float]] | None = None  # name, axis
    geoms: tuple[_Geom, ...] = ()
    sites: tuple[tuple[str, tuple[float, float, float]], ...] = ()
    children: tuple["_Body", ...] = ()
    quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)


def _finger(prefix: str, label: str, pos, ipos_middle_z: float, j: int) -> _Body:
    """A four-joint finger: knuckle (J3 abduction), proximal, middle, distal."""
    p = f"robot0:{prefix}"
    J = f"robot0:{label}J"
    distal = _Body(
            f"{p}distal", (0, 0, 0.025), 0.01, (0, 0, 0.015), 1e-5,
            joint=(f"{J}{j - 3}", (1, 0, 0)),
            geoms=(_Geom(f"robot0:C_{prefix}distal", "capsule", (0.00705, 0.012), (0, 0, 0.012)),),
            sites=((f"robot0:S_{prefix}tip", (0, 0, 0.026)),),
    )
    middle = _Body(
            f"{p}middle", (0, 0, 0.045), 0.012, (0, 0, ipos_middle_z), 1e-5,
            joint=(f"{J}{j - 2}", (1, 0, 0)),
            geoms=(_Geom(f"robot0:C_{prefix}middle", "capsule", (0.00805, 0.0125), (0, 0, 0.0125)),),
            children=(distal,),
    )
    proximal = _Body(
            f"{p}proximal", (0, 0, 0), 0.014, (0, 0, 0.023), 1e-5,
            joint=(f"{J}{j - 1}", (1, 0, 0)),
            geoms=(_Geom(f"robot0:C_{prefix}proximal", "capsule", (0.01, 0.0225), (0, 0, 0.0225)),),
            children=(middle,),
    )
    return _Body(
            f"{p}knuckle", pos, 0.008, (0, 0, 0), 1e-5,
            joint=(f"{J}{j}", (0, 1, 0)),
            children=(proximal,),
    )


def _thumb() -> _Body:
    distal = _Body(
            "robot0:thdistal", (0, 0, 0.032), 0.016, (0, 0, 0.016), 1e-5,
            joint=("robot0:THJ0", (0, 1, 0)),
            geoms=(_Geom("robot0:C_thdistal", "capsule", (0.00918, 0.013), (0, 0, 0.013)),),
            sites=(("robot0:S_thtip", (0, 0, 0.0275)),),
    )
    middle = _Body(
            "robot0:thmiddle", (0, 0, 0), 0.016, (0, 0, 0.016), 1e-5,
            joint=("robot0:THJ1", (0, 1, 0)),
            geoms=(_Geom("robot0:C_thmiddle", "capsule", (0.011, 0.016), (0, 0, 0.016)),),
            children=(distal,),
    )
    hub = _Body(
            "robot0:thhub", (0, 0, 0.038), 0.002, (0, 0, 0), 1e-5,
            joint=("robot0:THJ2", (1, 0, 0)), children=(middle,),
    )
    proximal = _Body(
            "robot0:thproximal", (0, 0, 0), 0.016, (0, 0, 0.017), 1e-5,
            joint=("robot0:THJ3", (1, 0, 0)),
            geoms=(_Geom("robot0:C_thproximal", "capsule", (0.013, 0.019), (0, 0, 0.019)),),
            children=(hub,),
    )
    return _Body(
            "robot0:thbase", (0.034, -0.009, 0.029), 0.01, (0, 0, 0), 1e-5,
            joint=("robot0:THJ4", (0, 0, -1)), children=(proximal,),
            quat=(0.923956, 0.0, 0.382499, 0.0),  # 0.785 rad about y
    )


def _little() -> _Body:
    knuckle = _finger("lf", "LF", (-0.017, 0, 0.044), 0.012, 3)
    return _Body(
            "robot0:lfmetacarpal", (-0.017, 0, 0.044), 0.075, (-0.014, 0.001, 0.014), 1e-5,
            joint=("robot0:LFJ4", (0.570977, 0, 0.820966)),
            geoms=(_Geom("robot0:C_lfmetacarpal", "box", (0.0095, 0.0111, 0.025), (-0.0165, 0, 0.01)),),
            children=(knuckle,),
    )


PALM = _Body(
        constants.ROOT_BODY, (0, 0, 0), 0.3, (0.006, 0, 0.036), 1e-3,
        geoms=(
                _Geom("robot0:C_palm0", "box", (0.032, 0.0111, 0.049), (0.011, 0, 0.038)),
                _Geom("robot0:C_palm1", "box", (0.011, 0.0111, 0.025), (-0.032, 0, 0.014)),
        ),
        children=(
                _finger("ff", "FF", (0.033, 0, 0.095), 0.011, 3),
                _finger("mf", "MF", (0.011, 0, 0.099), 0.012, 3),
                _finger("rf", "RF", (-0.011, 0, 0.095), 0.012, 3),
                _little(),
                _thumb(),
        ),
)

_RANGES = dict(zip(constants.JOINT_NAMES, constants.JOINT_RANGES))
_GEOM_TYPES = {"box": mujoco.mjtGeom.mjGEOM_BOX, "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE}


def _add_body(parent, body: _Body, config: HandConfig) -> None:
    b = parent.add_body(name=body.name, pos=body.pos, quat=body.quat)
    b.explicitinertial = True
    b.mass = body.mass
    b.ipos = body.ipos
    b.inertia = (body.inertia,) * 3
    if config.gravity_compensation:
        b.gravcomp = 1.0
    if body.joint is not None:
        name, axis = body.joint
        b.add_joint(
                name=name, type=mujoco.mjtJoint.mjJNT_HINGE, axis=axis,
                range=_RANGES[name], limited=mujoco.mjtLimited.mjLIMITED_TRUE,
                damping=config.finger_damping, armature=config.finger_armature,
        )
    for g in body.geoms:
        b.add_geom(
                name=g.name, type=_GEOM_TYPES[g.type], size=g.size + (0.0,) * (3 - len(g.size)),
                pos=g.pos, contype=HAND_BIT, conaffinity=OBJECT_BIT | TABLE_BIT,
                condim=config.condim, friction=config.friction, rgba=config.rgba,
        )
    for name, pos in body.sites:
        b.add_site(name=name, pos=pos, size=(0.002, 0, 0), group=3)
    for child in body.children:
        _add_body(b, child, config)


def add_hand(spec: mujoco.MjSpec, config: HandConfig = HandConfig()) -> None:
    """Adds the hand (bodies, wrist and finger joints, actuators) to `spec`.

    `spec` must use radians (`spec.compiler.degree = False`).
    qpos layout of the hand: 6 wrist joints (`WRIST_JOINT_NAMES`) then the 22
    finger joints (`constants.JOINT_NAMES`); ctrl has the same 28 entries.
    """
    if spec.compiler.degree:
        raise ValueError("add_hand needs a spec in radians: set spec.compiler.degree = False")
    if config.strength <= 0 or config.finger_kp <= 0:
        raise ConfigError("hand strength and finger_kp must be positive")
    _add_body(spec.worldbody, PALM, config)
    palm = spec.body(constants.ROOT_BODY)
    # MuJoCo composes a body's joints in order: the slides act along world axes
    # and the hinges give Rz Ry Rx. The palm is the first body, so qpos and
    # ctrl start with the wrist.
    for name, axis in zip(WRIST_JOINT_NAMES, _WRIST_AXES):
        slide = name.startswith("robot0:WRJT")
        palm.add_joint(
                name=name,
                type=mujoco.mjtJoint.mjJNT_SLIDE if slide else mujoco.mjtJoint.mjJNT_HINGE,
                axis=axis,
                damping=config.wrist_damping_translation if slide else config.wrist_damping_rotation,
                armature=config.wrist_armature_translation if slide else config.wrist_armature_rotation,
        )
    for name in WRIST_JOINT_NAMES:
        slide = name.startswith("robot0:WRJT")
        kp = config.wrist_kp_translation if slide else config.wrist_kp_rotation
        limit = config.wrist_force_limit if slide else config.wrist_torque_limit
        act = spec.add_actuator(name=name.replace("robot0:", "robot0:A_"), target=name)
        act.trntype = mujoco.mjtTrn.mjTRN_JOINT
        act.set_to_position(kp=kp)
        act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        act.forcerange = (-limit, limit)
    for name, torque in zip(constants.JOINT_NAMES, FINGER_TORQUE_LIMITS):
        act = spec.add_actuator(name=name.replace("robot0:", "robot0:A_"), target=name)
        act.trntype = mujoco.mjtTrn.mjTRN_JOINT
        act.set_to_position(kp=config.finger_kp)
        act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        act.ctrlrange = tuple(_RANGES[name])
        act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        act.forcerange = (-torque * config.strength, torque * config.strength)


def hand_spec(config: HandConfig = HandConfig()) -> mujoco.MjSpec:
    """A spec holding only the hand, for tests and for composing scenes."""
    spec = mujoco.MjSpec()
    spec.compiler.degree = False
    spec.modelname = "shadow_hand"
    add_hand(spec, config)
    return spec
