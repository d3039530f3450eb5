"""Hold-test protocols as configs.

A protocol says how a grasp is judged: the scene's physics (`PhysicsConfig`:
friction, finger strength, object mass), how the fingers squeeze
(`SqueezeConfig`), how long and how hard the object is pulled along each of
the six object-frame directions, and when a direction counts as held. The
lift protocol (`lift.LiftProtocol`) holds the same two parts, so a hold test
with a lift's physics is composed, not copied. Every number is a field with
its valid values declared (`configs`); `protocol(name, **over)` returns a
preset with overrides (`physics.friction=0.5`, or `friction=0.5`), and
`validate()` rejects impossible values with a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from diffrl_jax import bounds, configs
from diffrl_jax.configs import integer, non_negative, positive
from diffrl_jax.errors import ConfigError

# The six pull directions of the object frame, in this order everywhere.
DIRECTIONS = ((1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
              (0.0, -1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, -1.0))
DIRECTION_NAMES = ("+x", "-x", "+y", "-y", "+z", "-z")
NUM_DIRECTIONS = len(DIRECTIONS)
MAX_TIMESTEP = 0.02  # s, the coarsest step a protocol accepts for contact


@dataclasses.dataclass(frozen=True)
class PhysicsConfig:
    """The physics of a scenario, shared by the hold and the lift protocols.

    Infinite values pass the declared checks and are caught by the protocol's
    physical ranges (`bounds.check_protocol`) with their range in the message.
    """

    friction: float = positive(1.0)  # sliding friction of hand and object (MuJoCo takes the max)
    finger_strength: float = positive(1.0)  # multiplies the ShadowHand's finger torque limits
    finger_kp: float = positive(3.0)  # N m / rad, finger position servo stiffness
    object_density: float = positive(500.0)  # kg / m^3, for objects given by density (meshes)
    mass_scale: float = positive(1.0)  # multiplies every object's mass (and inertia)
    timestep: float = positive(0.004)  # s, at most MAX_TIMESTEP
    # Frictional-to-normal impedance ratio of the contacts (MuJoCo's
    # `impratio`): above 1, friction is stiffer and a gripped object creeps
    # less through MuJoCo's soft contacts.
    impratio: float = positive(1.0, finite=True)
    # MJX simulates every candidate contact pair; keeping the nearest few
    # bounds the constraint rows (MuJoCo C only ever has the active ones).
    max_contacts: int = integer(64, min=1)

    def steps(self, seconds: float) -> int:
        """Physics steps in `seconds`."""
        return round(seconds / self.timestep)

    def validate(self, what: str = "physics") -> PhysicsConfig:
        configs.check(self, what)
        check_timestep(self)
        bounds.check_protocol(self, what)
        return self


@dataclasses.dataclass(frozen=True)
class SqueezeConfig:
    """How the finger targets close in on the object beyond the grasp's joints.

    Hand points within `reach_m` of the object are driven `depth_m` further
    along the inward surface normal (joint targets by damped least squares on
    the finger Jacobian), as DexGraspNet's validator does; `closure_rad` is
    added to every flexion target on top. The aliases are the names of the
    flat protocols before (`--set squeeze_m=0` and old records still work).
    """

    depth_m: float = non_negative(0.005, alias="squeeze_m")
    reach_m: float = non_negative(0.01, alias="squeeze_distance_m")
    closure_rad: float = non_negative(0.0, alias="squeeze_closure_rad")

    def validate(self, what: str = "squeeze") -> SqueezeConfig:
        return configs.check(self, what)


def check_timestep(physics: PhysicsConfig) -> None:
    if physics.timestep > MAX_TIMESTEP:
        raise ConfigError(f"timestep {physics.timestep} s is too coarse for contact "
                          f"(at most {MAX_TIMESTEP} s)")


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
    physics: PhysicsConfig = PhysicsConfig()
    squeeze: SqueezeConfig = SqueezeConfig()
    # Pull.
    acceleration: float = non_negative(9.81)  # m / s^2 applied as a force m * a on the object
    settle_s: float = non_negative(0.1)
    hold_s: float = positive(0.5, finite=True)
    # Success of one direction (relative to the palm, at the end of the pull); inf: unbounded.
    translation_bound_m: float = positive(0.02)
    rotation_bound_rad: float = positive(math.radians(15.0))
    require_contact: bool = False  # also need a hand-object contact at the end
    # A grasp whose hand starts deeper than this inside the object (the deepest
    # hand-object contact at placement) holds nothing: its "hold" would come
    # from the contact solver pushing the interpenetrating bodies apart, not
    # from a grasp. DexGraspNet's bound was 1 mm on its own keypoint measure;
    # on this one (capsules against convex pieces) its grasps measure 0.7 mm
    # median and 3.7 mm at the 99th percentile, and 5 mm admits 99.6% of them.
    penetration_bound_m: float = positive(0.005)

    @property
    def settle_steps(self) -> int:
        return self.physics.steps(self.settle_s)

    @property
    def hold_steps(self) -> int:
        return self.physics.steps(self.hold_s)

    @property
    def total_steps(self) -> int:
        """Physics steps of one grasp over all directions (settle shared)."""
        return self.settle_steps + NUM_DIRECTIONS * self.hold_steps

    def validate(self) -> HoldProtocol:
        configs.check(self, "protocol")  # every field's declared range, physics and squeeze included
        check_timestep(self.physics)
        if self.hold_steps < 1:
            raise ConfigError(f"hold_s {self.hold_s} is shorter than one timestep {self.physics.timestep}")
        bounds.check_protocol(self, "protocol")  # friction, finger strength, masses: physical ranges
        return self

    def replace(self, **overrides) -> HoldProtocol:
        """A checked copy; fields by dotted path (`physics.friction`) or unique leaf name (`friction`)."""
        return configs.replace(self, overrides, "protocol").validate()

    @classmethod
    def from_json(cls, record: Mapping) -> HoldProtocol:
        """The protocol of a `validate.protocol_json` record, nested or in the flat form of old runs."""
        return configs.from_dict(cls, record, "protocol").validate()


STRICT = HoldProtocol()

# DexGraspNet's Isaac Gym validator, as closely as MuJoCo allows: friction 3,
# 100 steps of 1/60 s with gravity along each direction from the start, finger
# targets pushed 1 mm along the contact normals, and success meaning some
# hand-object contact remains (no displacement bound).
DEXGRASPNET = HoldProtocol(
    name="dexgraspnet",
    physics=PhysicsConfig(friction=3.0),
    squeeze=SqueezeConfig(depth_m=0.001, reach_m=0.01),
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
