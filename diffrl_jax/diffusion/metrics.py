"""Diversity and coverage of a set of grasps `[N, 31]` (numpy, host side).

Grasps are compared part by part: wrist translation (metres), wrist rotation
(geodesic angle, radians) and finger joints (root-mean-square difference
over the 22 joints, radians).

- diversity: mean pairwise distance of each part within one set.
- coverage: fraction of reference grasps (e.g. the dataset's, for one object
  and scale) that have a sample within ALL of the stated thresholds; the
  same rule read the other way gives precision, the fraction of samples
  near some reference grasp.
"""

from __future__ import annotations

import numpy as np

from diffrl_jax.data import grasps as grasp_lib

# "Within a stated distance": 2 cm, 20 degrees, 0.2 rad RMS over the joints.
COVERAGE_TRANSLATION_M = 0.02
COVERAGE_ROTATION_RAD = float(np.deg2rad(20.0))
COVERAGE_JOINTS_RMS_RAD = 0.2
_CHUNK = 1024


def _parts(grasps):
    grasps = np.asarray(grasps, dtype=np.float64)
    translation, rotation, joints = grasp_lib.split_grasps(grasps)
    return translation, rotation.reshape(len(grasps), 9), joints


def _pairwise(a, b):
    """Part distances between grasp sets: three `[N, M]` arrays (translation, angle, joints RMS)."""
    (ta, ra, ja), (tb, rb, jb) = a, b
    translation = np.sqrt(np.maximum(
        (ta**2).sum(1)[:, None] + (tb**2).sum(1)[None] - 2.0 * ta @ tb.T, 0.0))
    cos = np.clip((ra @ rb.T - 1.0) / 2.0, -1.0, 1.0)  # trace(Ra^T Rb) = <vec Ra, vec Rb>
    joints = np.sqrt(np.maximum(
        (ja**2).sum(1)[:, None] + (jb**2).sum(1)[None] - 2.0 * ja @ jb.T, 0.0) / ja.shape[1])
    return translation, np.arccos(cos), joints


def _chunks(parts, size=_CHUNK):
    n = len(parts[0])
    for start in range(0, n, size):
        yield start, tuple(p[start:start + size] for p in parts)


def diversity(grasps, max_grasps: int | None = 4096, seed: int = 0) -> dict:
    """Mean pairwise part distances over distinct pairs of `grasps [N, 31]`.

    Above `max_grasps` a fixed random subset is used (pairs grow as N^2).
    Returns {"translation_m", "rotation_rad", "joints_rms_rad", "n"}.
    """
    grasps = np.asarray(grasps, dtype=np.float64)
    if max_grasps is not None and len(grasps) > max_grasps:
        grasps = grasps[np.random.default_rng(seed).choice(len(grasps), max_grasps, replace=False)]
    n = len(grasps)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 grasps, got {n}")
    parts = _parts(grasps)
    sums = np.zeros(3)
    for _, chunk in _chunks(parts):
        for i, d in enumerate(_pairwise(chunk, parts)):
            sums[i] += d.sum()  # the diagonal is 0, so the sum is over distinct pairs
    means = sums / (n * (n - 1))
    return {"translation_m": means[0], "rotation_rad": means[1], "joints_rms_rad": means[2], "n": n}


def coverage(samples, reference, translation_m: float = COVERAGE_TRANSLATION_M,
             rotation_rad: float = COVERAGE_ROTATION_RAD,
             joints_rms_rad: float = COVERAGE_JOINTS_RMS_RAD) -> dict:
    """How well `samples [N, 31]` cover `reference [M, 31]` (same object and scale).

    A pair matches when its translation, rotation and joint distances are all
    within the thresholds. Returns {"coverage": fraction of reference grasps
    matched by some sample, "precision": fraction of samples matching some
    reference grasp, "nearest_translation_m": median over reference grasps
    of the distance to the nearest sample's wrist, thresholds}.
    """
    sample_parts, reference_parts = _parts(samples), _parts(reference)
    covered = np.zeros(len(reference), bool)
    precise = np.zeros(len(samples), bool)
    nearest = np.full(len(reference), np.inf)
    for start, chunk in _chunks(reference_parts):
        translation, angle, joints = _pairwise(chunk, sample_parts)
        match = (translation <= translation_m) & (angle <= rotation_rad) & (joints <= joints_rms_rad)
        covered[start:start + len(match)] = match.any(1)
        precise |= match.any(0)
        nearest[start:start + len(match)] = translation.min(1)
    return {
        "coverage": float(covered.mean()),
        "precision": float(precise.mean()),
        "nearest_translation_m": float(np.median(nearest)),
        "thresholds": {"translation_m": translation_m, "rotation_rad": rotation_rad,
                       "joints_rms_rad": joints_rms_rad},
    }


def rotation_check(grasps) -> float:
    """Largest deviation of the rot6d columns from orthonormal (0 for valid grasps)."""
    grasps = np.asarray(grasps, dtype=np.float64)
    a, b = grasps[..., 3:6], grasps[..., 6:9]
    return float(np.max(np.abs(np.stack([
        (a * a).sum(-1) - 1.0, (b * b).sum(-1) - 1.0, (a * b).sum(-1)]))))

