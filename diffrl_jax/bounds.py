"""Sanity bounds on every physical quantity read from files, flags or configs.

A value outside these ranges is not a hard grasp but a corrupt or mistyped
input (a scale of 1e9, a joint at 1e3 rad): simulating it makes MuJoCo
print "The simulation is unstable" and the report meaningless. Each range
is a field of `PhysicalBounds`, chosen from the shared DexGraspNet sample
and the built-in objects so that no real input comes near it; the places
where values enter (the DexGraspNet loader, the OBJ reader, protocol
`validate()`, `--scale` flags) check against `BOUNDS` and raise a
`DataError` (files) or `ConfigError` (flags, configs) that names the field.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from diffrl_jax import configs
from diffrl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PhysicalBounds:
    """Closed ranges `(low, high)` of physical inputs; units in the names."""

    # Object scale (mesh units -> metres). DexGraspNet uses 0.06-0.15 on meshes
    # of about unit radius; 0.01-1 spans a 2 cm bead to a 2 m object, and
    # `diffrl propose --scale` defaults to 1 for OBJ files already in metres.
    scale: tuple[float, float] = (0.01, 1.0)
    # Palm root position in the object frame, |t| in metres. The sample's grasps
    # reach 0.26 m (plates at scale 0.15); a palm a metre away touches nothing.
    translation_m: tuple[float, float] = (0.0, 1.0)
    # Joints may leave the ShadowHand's limits: DexGraspNet treats them as a soft
    # energy term, and the sample's worst joint lies 0.58 rad outside (MFJ3;
    # 99.9% within 0.48 rad). A margin of 1 rad keeps every real grasp.
    joint_margin_rad: float = 1.0
    # Palm rotation (sxyz Euler angles). DexGraspNet writes principal values
    # (|angle| <= pi); two full turns either way admits unwrapped angles, while
    # anything beyond is corrupt (and sin/cos of huge angles lose precision).
    euler_rad: tuple[float, float] = (-4.0 * math.pi, 4.0 * math.pi)
    # Largest side of the object's bounding box after scaling, metres. The sample
    # spans 0.11-0.29 m and the built-ins 0.07-0.23 m; a normalised mesh is at
    # most 2 radii (1.94) wide, so scale 1 stays below 2 m, and 5 mm is below
    # anything a fingertip (about 2 cm wide) could hold.
    extent_m: tuple[float, float] = (0.005, 2.0)
    # Vertices of one convex piece of an OBJ: a hull needs 4 (fewer cannot span
    # a volume, and qhull refuses them); the sample's CoACD pieces have 24-279.
    piece_vertices: tuple[int, int] = (4, 100_000)
    # Vertices of a whole OBJ: the sample's objects have 1199-1740; a million is
    # a raw scan, not a convex decomposition, and would stall the hull code.
    object_vertices: tuple[int, int] = (4, 1_000_000)
    # Object mass at its density, kg. The sample weighs 0.03-0.59 kg at density
    # 500 and scales 0.06-0.15, the built-ins 0.145-0.3 kg; at the smallest
    # scale (0.01) a sample mesh weighs 0.14 g, so 10 mg leaves room for light
    # materials, and 1 t (a sample mesh at scale 1 is 0.17 t) is beyond any hand.
    mass_kg: tuple[float, float] = (1e-5, 1000.0)
    # kg / m^3: from aerogel (about 1) to above osmium (22,600). DexGraspNet
    # validates at 500; the README's experiments use 125.
    density_kg_m3: tuple[float, float] = (1.0, 25_000.0)
    # Sliding friction coefficient: 1e-3 is below ice on ice, 10 far above
    # rubber (about 1-2); DexGraspNet's validator uses 3.
    friction: tuple[float, float] = (1e-3, 10.0)
    # Multiplier of the ShadowHand's finger torque limits; experiments use 0.5-4.
    finger_strength: tuple[float, float] = (0.01, 100.0)
    # Finger position servo stiffness, N m / rad; the protocols use 3, the
    # experiments up to 30.
    finger_kp: tuple[float, float] = (0.01, 1000.0)
    # Multiplier of every object's mass; the scenario sweeps use 1-2.
    mass_scale: tuple[float, float] = (0.01, 100.0)
    # Pull on the object, m / s^2: 0 (no pull) up to 100 g.
    acceleration_m_s2: tuple[float, float] = (0.0, 1000.0)

    def joint_ranges(self) -> np.ndarray:
        """[22, 2] the hand's joint limits widened by `joint_margin_rad` on both sides."""
        # Here, not at the top: the hand imports MuJoCo, which protocol configs need not.
        from diffrl_jax.hand import constants

        return constants.JOINT_RANGES + np.array([-self.joint_margin_rad, self.joint_margin_rad])


BOUNDS = PhysicalBounds()

# Protocol leaf field -> the PhysicalBounds field it is checked against, wherever
# it sits in a protocol (HoldProtocol and LiftProtocol share their `physics`).
PROTOCOL_FIELDS = {
    "friction": "friction",
    "finger_strength": "finger_strength",
    "finger_kp": "finger_kp",
    "object_density": "density_kg_m3",
    "mass_scale": "mass_scale",
    "acceleration": "acceleration_m_s2",
}


def range_text(name: str, bounds: PhysicalBounds | None = None) -> str:
    """`[0.01, 1] (PhysicalBounds.scale)`: the range and where it is defined (`BOUNDS` by default)."""
    low, high = getattr(bounds or BOUNDS, name)
    return f"[{low:g}, {high:g}] (PhysicalBounds.{name})"


def check(value: float, name: str, what: str, error: type[Exception] = ConfigError,
          bounds: PhysicalBounds | None = None) -> None:
    """Raises `error("<what> is <value>, outside <range>")` unless `value` lies in range `name`.

    The range is closed; NaN lies outside every range.
    """
    low, high = getattr(bounds or BOUNDS, name)
    if not low <= value <= high:
        raise error(f"{what} is {value:g}, outside {range_text(name, bounds)}")


def check_protocol(config, what: str) -> None:
    """ConfigError unless each physics field of a hold or lift protocol (or its physics) lies in its range.

    `what` names the config in the message ("protocol field physics.friction
    is 50, outside [0.001, 10] (PhysicalBounds.friction)").
    """
    for path in configs.leaves(type(config)):
        name = PROTOCOL_FIELDS.get(path.rsplit(".", 1)[-1])
        if name is not None:
            check(configs.get(config, path), name, f"{what} field {path}")
