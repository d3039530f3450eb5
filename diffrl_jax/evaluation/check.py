"""`diffrl data check`: is a grasp dataset where the hand model says it is?

For each object: grasp counts per scale, joint-limit violations, how far the
five distal phalanges are from the object's surface, and how deep the hand
sinks into it. With the right palm frame, Euler convention and scale,
DexGraspNet's grasps put fingertips within about a millimetre of the surface;
a wrong convention puts them centimetres away.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data.dexgraspnet import GraspDataset
from diffrl_jax.objects import assets
from diffrl_jax.scene import SceneConfig, build_scene
from diffrl_jax.sim.geometry import measure_grasps

JOINT_LIMIT_TOLERANCE = 1e-3  # rad; DexGraspNet treats limits as a soft energy


def _scale_key(scale: float) -> str:
    # Stored scales are float32 round-offs of 0.06, 0.08, ...; 4 digits name them.
    return f"{scale:.4g}"


def check_object(
    dataset: GraspDataset,
    code: str,
    max_hull_vertices: int | None = assets.DEFAULT_MAX_HULL_VERTICES,
    scene_config: SceneConfig = SceneConfig(),
) -> dict:
    """The report of one object of `dataset` (see `check_dataset`)."""
    subset = dataset.for_object(code)
    grasps, scales = subset.grasps, subset.scales
    tips = np.empty((len(grasps), 5))
    penetration = np.empty(len(grasps))
    # One scene per distinct scale: the mesh is scaled, the hand is not.
    for scale in np.unique(scales):
        rows = np.nonzero(scales == scale)[0]
        obj = assets.mesh_object(
            dataset.mesh_path(code), float(scale), name=code, max_hull_vertices=max_hull_vertices
        )
        geometry = measure_grasps(build_scene(obj, scene_config), grasps[rows])
        tips[rows] = geometry.fingertip_distance
        penetration[rows] = geometry.penetration
    violation = grasp_lib.joint_limit_violation(grasps)
    worst_per_grasp = violation.max(axis=-1)
    values, counts = np.unique(scales, return_counts=True)
    return {
        "n_grasps": int(len(grasps)),
        "scales": {_scale_key(v): int(c) for v, c in zip(values, counts)},
        "joint_limit_violations": {
            "count": int(np.sum(worst_per_grasp > JOINT_LIMIT_TOLERANCE)),
            "worst_rad": float(worst_per_grasp.max()),
            "tolerance_rad": JOINT_LIMIT_TOLERANCE,
        },
        "fingertip_surface_mm_median": float(np.median(np.abs(tips)) * 1e3),
        "fingertip_surface_mm_per_finger": [
            float(x) for x in np.round(np.median(np.abs(tips), axis=0) * 1e3, 3)
        ],
        "penetration_mm_median": float(np.median(penetration) * 1e3),
        "penetration_mm_max": float(penetration.max() * 1e3),
    }


def check_dataset(
    dataset: GraspDataset,
    max_hull_vertices: int | None = assets.DEFAULT_MAX_HULL_VERTICES,
    scene_config: SceneConfig = SceneConfig(),
    progress: Callable[[str], None] | None = None,
) -> dict:
    """`{"objects": {code: report}}` for every object of `dataset`.

    Each report: `n_grasps`, `scales` (count per scale), `joint_limit_violations`
    (grasps with a joint more than 1 mrad outside its range, and the worst
    violation in rad), `fingertip_surface_mm_median` (median over all (grasp,
    fingertip) pairs of |signed distance| from the distal capsules to the
    object), its per-finger medians (thumb last), and the median and largest
    per-grasp penetration in mm.
    """
    objects = {}
    for code in dataset.object_codes:
        objects[code] = check_object(dataset, code, max_hull_vertices, scene_config)
        if progress is not None:
            progress(code)
    report = {"objects": objects, "max_hull_vertices": max_hull_vertices}
    if dataset.skipped:
        report["skipped"] = dict(dataset.skipped)
    return report
