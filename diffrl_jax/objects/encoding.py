"""A fixed-size shape encoding of any object: a basis point set (BPS).

A fixed set of K basis points in a ball around the object's origin (metres),
and for each the distance to the object's surface: `[K]` numbers that change
smoothly with the shape, need no training and exist for any mesh, so objects
never seen in training are encoded like the others (Prokudin et al. 2019).
The surface is approximated by area-weighted samples; distances are to the
nearest sample.

The encoding is `[K + 1]` float32: the K distances (metres) of the SCALED
object, then its bounding radius (metres, the largest distance of a mesh
vertex from the origin). The radius stands in for DexGraspNet's scale: their
meshes are normalised to a radius of about 1/1.03, so radius ~ scale / 1.03,
and unlike the scale it is defined for objects given directly in metres
(built-in objects, `assets.ObjectAsset`).

Meshes are read as CoACD files are written: convex pieces (`o` groups), whose
surface is the union of the pieces' hulls. Faces between touching pieces are
inside the object; they are sampled too, which only lowers the distances of
basis points inside the object.
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np

from diffrl_jax.errors import DataError
from diffrl_jax.objects import assets

DEFAULT_NUM_BASIS = 128
DEFAULT_BASIS_RADIUS = 0.15  # metres: DexGraspNet objects at scale <= 0.15 fit inside
DEFAULT_SURFACE_SAMPLES = 2048


@functools.lru_cache(maxsize=8)
def _basis(num_points: int, radius: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(num_points, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = radius * rng.uniform(size=(num_points, 1)) ** (1.0 / 3.0)  # uniform in volume
    points = directions * radii
    points.setflags(write=False)
    return points


def bps_basis(num_points: int = DEFAULT_NUM_BASIS, radius: float = DEFAULT_BASIS_RADIUS,
              seed: int = 0) -> np.ndarray:
    """`[K, 3]` float64 points uniform in a ball of `radius` metres; same seed, same points."""
    if num_points < 1 or not radius > 0:
        raise ValueError(f"need num_points >= 1 and radius > 0, got {num_points}, {radius}")
    return _basis(int(num_points), float(radius), int(seed))


def surface_points(vertices, faces, n: int, seed: int = 0) -> np.ndarray:
    """`n` points on the triangles `faces [F, 3]` of `vertices [V, 3]`, area-weighted.

    Deterministic for a given seed. Returns `[n, 3]` float64.
    """
    return surface_samples(vertices, faces, n, seed)[0]


def surface_samples(vertices, faces, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`surface_points` with the index [n] of the face each point lies on."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"need vertices [V, 3] and faces [F, 3], got {vertices.shape}, {faces.shape}")
    if len(faces) == 0:
        raise DataError("the mesh has no faces to sample")
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    total = areas.sum()
    if not total > 0:
        raise DataError("the mesh has zero surface area")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(faces), size=n, p=areas / total)
    u, v = rng.uniform(size=(2, n, 1))
    su = np.sqrt(u)  # uniform barycentric coordinates on a triangle
    return (1.0 - su) * a[chosen] + su * (1.0 - v) * b[chosen] + su * v * c[chosen], chosen


def convex_surface(pieces) -> tuple[np.ndarray, np.ndarray]:
    """Hull triangles of each convex piece `[V_i, 3]`, merged: (vertices [V, 3], faces [F, 3])."""
    all_vertices, all_faces, offset = [], [], 0
    for points in pieces:
        points = np.asarray(points, dtype=np.float64)
        hull = assets.convex_hull(points)  # a flat piece joggled, as simulated
        all_vertices.append(points)
        all_faces.append(hull.simplices + offset)
        offset += len(points)
    if not all_vertices:
        raise DataError("the object has no pieces to encode")
    return np.concatenate(all_vertices), np.concatenate(all_faces)


def mesh_file_surface(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A CoACD-style OBJ file (normalised units) -> (vertices [V, 3], faces [F, 3])."""
    return convex_surface(assets.read_obj_pieces(path))


def object_surface(obj: assets.ObjectAsset) -> tuple[np.ndarray, np.ndarray]:
    """An ObjectAsset (metres; primitives meshed as convex point sets) -> (vertices, faces)."""
    from diffrl_jax.data.example import object_mesh_pieces  # imports MuJoCo: only when needed

    return convex_surface(object_mesh_pieces(obj))


def encoding_dim(basis: np.ndarray | None = None) -> int:
    """Length of an encoding: K basis distances + the radius."""
    return (DEFAULT_NUM_BASIS if basis is None else len(basis)) + 1


def encode_points(points, radius: float, basis: np.ndarray | None = None) -> np.ndarray:
    """Surface samples `[n, 3]` and bounding radius (metres) -> `[K + 1]` float32."""
    basis = bps_basis() if basis is None else np.asarray(basis, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    squared = (
        np.sum(basis**2, axis=1)[:, None] + np.sum(points**2, axis=1)[None, :] - 2.0 * basis @ points.T
    )
    distances = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
    return np.append(distances, radius).astype(np.float32)


def encode_mesh(vertices, faces, scale: float, basis: np.ndarray | None = None,
                num_samples: int = DEFAULT_SURFACE_SAMPLES, seed: int = 0) -> np.ndarray:
    """The mesh `vertices [V, 3] * scale`, `faces [F, 3]` -> `[K + 1]` float32 encoding.

    The radius feature is the largest distance of a vertex from the origin.
    """
    if not (np.isfinite(scale) and scale > 0):
        raise DataError(f"object scale must be a positive number, got {scale!r}")
    vertices = np.asarray(vertices, dtype=np.float64) * scale
    points = surface_points(vertices, faces, num_samples, seed)
    radius = np.sqrt(np.max(np.sum(vertices[np.unique(faces)] ** 2, axis=1)))
    return encode_points(points, radius, basis)


def encode_object(obj: assets.ObjectAsset | str | os.PathLike, scale: float = 1.0,
                  basis: np.ndarray | None = None,
                  num_samples: int = DEFAULT_SURFACE_SAMPLES) -> np.ndarray:
    """Encode an ObjectAsset (metres, times `scale`) or a CoACD OBJ path (times `scale`).

    Returns `[K + 1]` float32. Reading and encoding a DexGraspNet mesh takes
    a few milliseconds.
    """
    if isinstance(obj, assets.ObjectAsset):
        vertices, faces = object_surface(obj)
    else:
        vertices, faces = mesh_file_surface(pathlib.Path(obj))
    return encode_mesh(vertices, faces, scale, basis=basis, num_samples=num_samples)


def encode_mesh_scales(path: str | os.PathLike, scales, basis: np.ndarray | None = None,
                       num_samples: int = DEFAULT_SURFACE_SAMPLES) -> np.ndarray:
    """One OBJ file at several scales `[S]` -> `[S, K + 1]`; the file is read once."""
    vertices, faces = mesh_file_surface(path)
    return np.stack([encode_mesh(vertices, faces, float(s), basis=basis, num_samples=num_samples)
                     for s in np.atleast_1d(scales)])
