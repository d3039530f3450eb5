"""Resting poses as data: how an object lies on the table, and how often.

An object dropped on the table in a random orientation comes to rest in one of
a few ways (a box on one of its faces, a mug upright, upside down or on its
side). What a grasp must avoid is the table, and where the table is, seen
from the object, is the world's up-direction expressed in the object frame:
`up = R^T e_z` for the object's resting rotation R. Poses whose
up-directions lie within `tolerance_deg` of each other form a pose class; a
class is its mean up-direction and its frequency among the drops. Yaw about
the up-direction and the place on the table do not change the class.

`resting_bank` drops an object `n` times through a backend's `settle` (the lift
protocol's drops and settling), and `pose_classes` groups the result. The
grouping is deterministic and does not depend on the order of the drops: the
densest up-direction (most neighbours within the tolerance) founds the first
class, which takes every pose within the tolerance of it; the densest of
the rest founds the next, and so on. Classes come out most frequent first.
Pure numpy except the settle.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError

DEFAULT_TOLERANCE_DEG = 15.0


@dataclasses.dataclass(frozen=True, eq=False)
class RestingPoses:
    """`n` resting poses of one object (at one scale) and their classes.

    poses:      [n, 7] object pose in the world (pos, quat wxyz), at rest on the table
    up:         [n, 3] world +z in the object frame (unit)
    pose_class: [n] int, index into the class arrays
    class_up:   [C, 3] each class's mean up-direction (unit)
    class_frequency: [C] fraction of the drops in each class (sums to 1), descending
    """

    poses: np.ndarray
    up: np.ndarray
    pose_class: np.ndarray
    class_up: np.ndarray
    class_frequency: np.ndarray
    tolerance_deg: float

    @property
    def num_classes(self) -> int:
        return len(self.class_up)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save (`files.write_npz_atomic`); `from_arrays` reads them back."""
        return {"poses": self.poses, "up": self.up, "pose_class": self.pose_class,
                "class_up": self.class_up, "class_frequency": self.class_frequency,
                "tolerance_deg": np.asarray(self.tolerance_deg)}

    @classmethod
    def from_arrays(cls, arrays) -> RestingPoses:
        try:
            out = cls(poses=np.asarray(arrays["poses"], np.float64), up=np.asarray(arrays["up"], np.float64),
                      pose_class=np.asarray(arrays["pose_class"], np.int64),
                      class_up=np.asarray(arrays["class_up"], np.float64),
                      class_frequency=np.asarray(arrays["class_frequency"], np.float64),
                      tolerance_deg=float(arrays["tolerance_deg"]))
        except KeyError as e:
            raise ConfigError(f"resting poses: missing array {e.args[0]!r}") from None
        return out.validate()

    def validate(self) -> RestingPoses:
        n, c = len(self.poses), len(self.class_up)
        shapes = {"poses": (n, 7), "up": (n, 3), "pose_class": (n,), "class_up": (c, 3),
                  "class_frequency": (c,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ConfigError(f"resting poses: {name} has shape {getattr(self, name).shape}, "
                                  f"expected {shape}")
        if not all(np.all(np.isfinite(getattr(self, k))) for k in ("poses", "up", "class_up", "class_frequency")):
            raise ConfigError("resting poses: non-finite values")
        if n and (self.pose_class.min() < 0 or self.pose_class.max() >= c):
            raise ConfigError(f"resting poses: pose_class outside [0, {c})")
        return self


def up_direction(quat) -> np.ndarray:
    """Object rotations as quaternions [..., 4] (wxyz) -> world +z in the object frame [..., 3]."""
    rotation = rotations.quat_to_matrix(np.asarray(quat, np.float64))
    return rotation[..., 2, :]  # R^T e_z: the third row of R


def pose_classes(up: np.ndarray, tolerance_deg: float = DEFAULT_TOLERANCE_DEG
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up-directions [n, 3] -> (class of each [n], class mean up [C, 3], frequency [C]).

    Deterministic, independent of the order of `up` up to ties of equal density
    (broken by the direction itself, lexicographically).
    """
    up = np.asarray(up, np.float64)
    if up.ndim != 2 or up.shape[1] != 3 or len(up) == 0:
        raise ConfigError(f"up-directions must have shape [n >= 1, 3], got {up.shape}")
    if not (np.isfinite(tolerance_deg) and 0 < tolerance_deg < 90):
        raise ConfigError(f"pose class tolerance must be in (0, 90) degrees, got {tolerance_deg}")
    up = up / np.linalg.norm(up, axis=1, keepdims=True)
    cos_tol = np.cos(np.radians(tolerance_deg))
    near = up @ up.T >= cos_tol  # [n, n]
    label = np.full(len(up), -1)
    centres = []
    # Ties of density go to the lexicographically smallest direction, so the
    # result does not depend on the order the drops came in.
    order = np.lexsort(up.T[::-1])
    while np.any(label < 0):
        free = label < 0
        density = (near & free[None, :]).sum(axis=1)
        density = np.where(free, density, -1)
        best = order[np.argmax(density[order])]
        members = free & near[best]
        centre = up[members].mean(axis=0)
        centre /= np.linalg.norm(centre)
        label[members] = len(centres)
        centres.append(centre)
    counts = np.bincount(label, minlength=len(centres))
    rank = np.argsort(-counts, kind="stable")  # most frequent first
    remap = np.empty_like(rank)
    remap[rank] = np.arange(len(rank))
    return remap[label], np.asarray(centres)[rank], counts[rank] / len(up)


def resting_bank(backend, template, prepared, n: int, seed: int = 0,
                 tolerance_deg: float = DEFAULT_TOLERANCE_DEG) -> RestingPoses:
    """`n` drops of `prepared` on the lift table (`backend.settle`, a `sim.backends.Backend`
    and a `lift.LiftTemplate`), grouped into pose classes."""
    import jax

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"number of drops must be a positive integer, got {n!r}")
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    poses = np.asarray(backend.settle(template, prepared, key, int(n)), np.float64)
    up = up_direction(poses[:, 3:])
    label, centres, frequency = pose_classes(up, tolerance_deg)
    return RestingPoses(poses, up, label, centres, frequency, float(tolerance_deg)).validate()
