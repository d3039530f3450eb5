"""Hold-test protocols as configs.

A protocol says how a grasp is judged: the scene's physics (friction, finger
strength, object mass), how the fingers squeeze, how long and how hard the
object is pulled along each of the six object-frame directions, and when a
direction counts as held. Every number is a field; `protocol(name, **over)`
returns a preset with overrides, and `validate()` rejects impossible values
with a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math

from diffrl_jax import bounds
from diffrl_jax.errors import ConfigError, check_fields

# The six pull directions of the object frame, in this order everywhere.
DIRECTIONS = ((1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
              (0.0, -1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, -1.0))
DIRECTION_NAMES = ("+x", "-x", "+y", "-y", "+z", "-z")
NUM_DIRECTIONS = len(DIRECTIONS)


@dataclasses.dataclass(frozen=True)
class HoldProtocol:
    """One way to decide whether a hand holds an object.

    Phases: `settle_s` with the fingers servoing to the grasp's joints plus the
    squeeze and no external force, then `hold_s` with the object pulled at
    `acceleration` (times its mass) along one direction. The wrist servo holds
    the palm where the grasp put it throughout. A direction is held when the
    object stays within the translation and rotation bounds of the palm and
    the hand did not start more than `penetration_bound_m` inside it.
    """

    name: str = "strict"
    # Physics of the scenario.
    friction: float = 1.0  # sliding friction of hand and object (MuJoCo takes the max)
    finger_strength: float = 1.0  # multiplies the ShadowHand's finger torque limits
    finger_kp: float = 3.0  # N m / rad, finger position servo stiffness
    object_density: float = 500.0  # kg / m^3, for objects given by density (meshes)
    mass_scale: float = 1.0  # multiplies every object's mass (and inertia)
    timestep: float = 0.004  # s
    # Frictional-to-normal impedance ratio of the contacts (MuJoCo's
    # `impratio`): above 1, friction is stiffer and a gripped object creeps
    # less through MuJoCo's soft contacts.
    impratio: float = 1.0
    # MJX simulates every candidate contact pair; keeping the nearest few
    # bounds the constraint rows (MuJoCo C only ever has the active ones).
    max_contacts: int = 64
    # Squeeze: hand points within `squeeze_distance_m` of the object are driven
    # `squeeze_m` further along the inward surface normal (joint targets by
    # damped least squares on the finger Jacobian), as DexGraspNet's validator
    # does; `squeeze_closure_rad` is added to every flexion target on top.
    squeeze_m: float = 0.005
    squeeze_distance_m: float = 0.01
    squeeze_closure_rad: float = 0.0
    # Pull.
    acceleration: float = 9.81  # m / s^2 applied as a force m * a on the object
    settle_s: float = 0.1
    hold_s: float = 0.5
    # Success of one direction (relative to the palm, at the end of the pull).
    translation_bound_m: float = 0.02
    rotation_bound_rad: float = math.radians(15.0)
    require_contact: bool = False  # also need a hand-object contact at the end
    # A grasp whose hand starts deeper than this inside the object (the deepest
    # hand-object contact at placement) holds nothing: its "hold" would come
    # from the contact solver pushing the interpenetrating bodies apart, not
    # from a grasp. DexGraspNet's bound was 1 mm on its own keypoint measure;
    # on this one (capsules against convex pieces) its grasps measure 0.7 mm
    # median and 3.7 mm at the 99th percentile, and 5 mm admits 99.6% of them.
    penetration_bound_m: float = 0.005

    @property
    def settle_steps(self) -> int:
        return int(round(self.settle_s / self.timestep))

    @property
    def hold_steps(self) -> int:
        return int(round(self.hold_s / self.timestep))

    @property
    def total_steps(self) -> int:
        """Physics steps of one grasp over all directions (settle shared)."""
        return self.settle_steps + NUM_DIRECTIONS * self.hold_steps

    def validate(self) -> "HoldProtocol":
        positive = ("friction", "finger_strength", "finger_kp", "object_density",
                    "mass_scale", "timestep", "impratio", "hold_s", "translation_bound_m",
                    "rotation_bound_rad", "penetration_bound_m")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and not math.isnan(value)):
                raise ConfigError(f"protocol field {name} must be positive, got {value!r}")
        non_negative = ("squeeze_m", "squeeze_distance_m", "squeeze_closure_rad",
                        "acceleration", "settle_s")
        for name in non_negative:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"protocol field {name} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.max_contacts, int) and self.max_contacts >= 1):
            raise ConfigError(f"protocol field max_contacts must be a positive integer, got {self.max_contacts!r}")
        if self.timestep > 0.02:
            raise ConfigError(f"timestep {self.timestep} s is too coarse for contact (at most 0.02 s)")
        if self.hold_steps < 1:
            raise ConfigError(f"hold_s {self.hold_s} is shorter than one timestep {self.timestep}")
        bounds.check_protocol(self, "protocol")  # friction, finger strength, masses: physical ranges
        return self

    def replace(self, **overrides) -> "HoldProtocol":
        check_fields(self, overrides, "protocol")
        return dataclasses.replace(self, **overrides).validate()


STRICT = HoldProtocol()

# DexGraspNet's Isaac Gym validator, as closely as MuJoCo allows: friction 3,
# 100 steps of 1/60 s with gravity along each direction from the start, finger
# targets pushed 1 mm along the contact normals, and success meaning some
# hand-object contact remains (no displacement bound).
DEXGRASPNET = HoldProtocol(
    name="dexgraspnet",
    friction=3.0,
    squeeze_m=0.001,
    squeeze_distance_m=0.01,
    settle_s=0.0,
    hold_s=100 / 60,
    translation_bound_m=math.inf,
    rotation_bound_rad=math.inf,
    require_contact=True,
)

PROTOCOLS = {"strict": STRICT, "dexgraspnet": DEXGRASPNET}


def protocol(name: str = "strict", **overrides) -> HoldProtocol:
    """The preset `name` with `overrides` applied and checked."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name].replace(**overrides)
