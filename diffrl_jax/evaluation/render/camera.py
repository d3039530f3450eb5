"""Free cameras that frame a grasp: beside the object-hand line, far enough to see a box."""

from __future__ import annotations

import dataclasses
import math

import mujoco
import numpy as np

__all__ = ["Camera", "framing_camera", "geom_bounds", "side_azimuth", "side_camera"]


@dataclasses.dataclass(frozen=True)
class Camera:
    """A free camera: it looks at `lookat` from `distance` m, turned `azimuth` and `elevation` degrees."""

    lookat: tuple[float, float, float]
    distance: float
    azimuth: float = 90.0
    elevation: float = -25.0

    def mjv(self) -> mujoco.MjvCamera:
        camera = mujoco.MjvCamera()
        camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        camera.lookat[:] = self.lookat
        camera.distance = self.distance
        camera.azimuth = self.azimuth
        camera.elevation = self.elevation
        return camera


def side_camera(target, hand, distance: float, elevation: float = -25.0, lift: float = 0.0) -> Camera:
    """A camera at the side of the object-hand line: both in view, neither hiding the other.

    target, hand: world points [3]; it looks at their midpoint raised `lift` m
    from `distance` m.
    """
    target, hand = np.asarray(target, float), np.asarray(hand, float)
    lookat = 0.5 * (target + hand) + np.array([0.0, 0.0, lift])
    return Camera(tuple(float(x) for x in lookat), float(distance), side_azimuth(target, hand),
                  float(elevation))


def side_azimuth(target, hand) -> float:
    """Azimuth (degrees) of a camera beside the line from target [3] to hand [3]; 90 if it is vertical."""
    away = np.asarray(hand, float) - np.asarray(target, float)
    return math.degrees(math.atan2(away[1], away[0])) + 90.0 if np.linalg.norm(away[:2]) > 1e-6 else 90.0


def geom_bounds(model: mujoco.MjModel, data: mujoco.MjData, geoms) -> tuple[np.ndarray, np.ndarray]:
    """World box (lo [3], hi [3]) around the bounding spheres of `geoms` (budget padding, > 1 m, left out)."""
    geoms = np.asarray(geoms, int)
    radius = model.geom_rbound[geoms]
    geoms, radius = geoms[radius < 1.0], radius[radius < 1.0]
    centre = data.geom_xpos[geoms]
    return (centre - radius[:, None]).min(axis=0), (centre + radius[:, None]).max(axis=0)


def framing_camera(lo, hi, azimuth: float, elevation: float = -25.0, fovy_deg: float = 45.0) -> Camera:
    """A camera looking at the centre of the box (lo, hi) from far enough to see all of it.

    The box's bounding sphere fits the vertical field of view `fovy_deg`
    (the model's `vis.global_.fovy`, 45 by default); pictures wider than tall
    then fit it too.
    """
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    distance = max(0.3, 1.1 * radius / math.sin(math.radians(fovy_deg) / 2))
    return Camera(tuple(float(x) for x in 0.5 * (lo + hi)), distance, float(azimuth), float(elevation))
