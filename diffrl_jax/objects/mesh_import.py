"""Import a user's mesh as a DexGraspNet-style object: CoACD convex pieces, normalised units.

The simulator collides convex pieces only, so an arbitrary (concave) mesh is
first decomposed with CoACD, as DexGraspNet's own meshes were. Each piece is
then capped at `assets.DEFAULT_MAX_HULL_VERTICES` hull vertices (what is
written is what is simulated), and the whole is centred on its bounding box
and divided by its largest vertex radius, which becomes the default `scale`:
the input is taken to be in metres, so `assets.mesh_object(path, scale)`
gives back the input's size.

Every problem a user's file can have (missing, unreadable, empty, non-finite,
faces pointing past the vertices, flat or a line, the wrong size) is a
`DataError` naming the file, raised before anything is written; the output
directory is filled beside its place and renamed into it, so a failure leaves
no partial object behind. OBJ is read here; STL and PLY through trimesh (a
dependency of brax and MJX), imported only for them.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np

from diffrl_jax import bounds
from diffrl_jax.data.dexgraspnet import MESHDATA_DIR, mesh_path
from diffrl_jax.data.example import obj_text
from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.files import output_errors, staged_directory
from diffrl_jax.objects import assets, library

TRIMESH_SUFFIXES = (".stl", ".ply")
# The thinnest principal extent of the mesh, relative to its widest, below which it is
# flat (or a line): a closed surface around a volume is nowhere near this thin.
_MIN_RELATIVE_THICKNESS = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class ImportedMesh:
    """What `import_mesh` wrote.

    pieces: convex pieces `[V_i, 3]` in normalised units (as written).
    scale:  metres per mesh unit to load it with (`assets.mesh_object(path, scale)`).
    size_m: `[3]` the bounding box's sides at `scale`, metres.
    """

    code: str
    path: pathlib.Path
    pieces: tuple[np.ndarray, ...]
    scale: float
    size_m: np.ndarray


def _read_obj(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices `[V, 3]` and triangles `[F, 3]` (0-based; polygons fanned) of a Wavefront OBJ."""
    vertices: list[list[float]] = []
    faces: list[list[int]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts or parts[0] not in ("v", "f"):
                    continue
                if parts[0] == "v":
                    if len(parts) < 4:
                        raise DataError(f"{path}:{lineno}: a vertex needs three coordinates")
                    vertices.append([float(x) for x in parts[1:4]])
                    continue
                if len(parts) < 4:
                    raise DataError(f"{path}:{lineno}: a face needs at least three vertices")
                # "f 1/1/1 2/2/2 ...": the vertex index comes first; negative ones count back from the last vertex.
                index = [int(token.split("/")[0]) for token in parts[1:]]
                if 0 in index:
                    raise DataError(f"{path}:{lineno}: vertex indices start at 1, found 0")
                index = [i - 1 if i > 0 else len(vertices) + i for i in index]
                faces += [[index[0], index[k], index[k + 1]] for k in range(1, len(index) - 1)]
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a readable OBJ file ({e})") from None
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 3), np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def _read_with_trimesh(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        import trimesh
    except ImportError:
        raise DataError(f"{path}: reading {path.suffix} files needs trimesh (pip install trimesh); "
                        "or convert the mesh to OBJ") from None
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many kinds on a malformed file
        raise DataError(f"{path}: not a readable {path.suffix[1:].upper()} file ({e})") from None
    vertices = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
    return vertices, np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)


def read_mesh(path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices `[V, 3]` and triangles `[F, 3]` (0-based) of an OBJ, STL or PLY file, checked:
    DataError unless it has faces, finite vertices, indices in range and spans a volume."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"mesh file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".obj":
        vertices, faces = _read_obj(path)
    elif suffix in TRIMESH_SUFFIXES:
        vertices, faces = _read_with_trimesh(path)
    else:
        raise DataError(f"{path}: unsupported mesh format {path.suffix or '(no suffix)'!r}; "
                        f"expected .obj, {', '.join(TRIMESH_SUFFIXES)}")
    if len(vertices) == 0:
        raise DataError(f"{path}: empty mesh, no vertices")
    if len(faces) == 0:
        raise DataError(f"{path}: no faces ({len(vertices)} vertices); a closed surface is needed")
    bounds.check(len(vertices), "object_vertices", f"{path}: vertex count", DataError)
    bad = np.flatnonzero(~np.all(np.isfinite(vertices), axis=1))
    if len(bad):
        raise DataError(f"{path}: vertex {bad[0] + 1} (from 1) has a non-finite coordinate {vertices[bad[0]].tolist()}")
    out_of_range = np.flatnonzero(np.any((faces < 0) | (faces >= len(vertices)), axis=1))
    if len(out_of_range):
        face = faces[out_of_range[0]]
        raise DataError(f"{path}: triangle {out_of_range[0] + 1} (from 1) refers to vertex "
                        f"{(face[(face < 0) | (face >= len(vertices))][0] + 1)} (from 1), "
                        f"but the mesh has {len(vertices)} vertices")
    used = np.unique(vertices[np.unique(faces)], axis=0)
    if len(used) < 4:
        raise DataError(f"{path}: degenerate mesh, its faces use {len(used)} distinct vertices (a volume needs 4)")
    spans = np.linalg.svd(used - used.mean(axis=0), compute_uv=False)  # along principal axes
    if not spans[1] > _MIN_RELATIVE_THICKNESS * spans[0]:
        raise DataError(f"{path}: degenerate mesh, all its vertices lie on one line (zero volume)")
    if not spans[2] > _MIN_RELATIVE_THICKNESS * spans[0]:
        raise DataError(f"{path}: degenerate mesh, all its vertices lie in one plane (zero volume)")
    return vertices, faces


def _check_code(code: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", code):
        raise ConfigError(f"object code {code!r} must be letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return code


def decompose(vertices: np.ndarray, faces: np.ndarray, threshold: float, max_pieces: int,
              seed: int) -> list[np.ndarray]:
    """CoACD's convex pieces of a mesh, each as its hull's vertices, at most 32 of them."""
    import coacd  # here, not at the top: it loads a C++ library, which reading and checking a mesh does not need

    coacd.set_log_level("error")
    # Corners shared, not repeated per triangle (as STL stores them): CoACD checks the mesh is manifold.
    vertices, shared = np.unique(vertices, axis=0, return_inverse=True)
    parts = coacd.run_coacd(coacd.Mesh(vertices, shared.reshape(-1)[faces]), threshold=threshold,
                            max_convex_hull=max_pieces, seed=seed)
    pieces = []
    for part_vertices, _ in parts:  # a sliver without volume (under 4 vertices, or flat) adds nothing: dropped
        if len(part_vertices) < 4:
            continue
        spans = np.linalg.svd(part_vertices - part_vertices.mean(axis=0), compute_uv=False)
        if spans[2] > _MIN_RELATIVE_THICKNESS * spans[0]:
            pieces.append(library.hull_vertices(part_vertices))
    return pieces


def import_mesh(mesh_file, out_root, code: str | None = None, scale: float | None = None,
                threshold: float = 0.05, max_pieces: int = 8, seed: int = 0) -> ImportedMesh:
    """Decomposes `mesh_file` (metres) and writes `out_root/meshdata/<code>/coacd/decomposed.obj`.

    `code` defaults to the file's stem (characters other than letters, digits,
    '.', '_', '-' become '-'); `scale` (metres per mesh unit) to the mesh's own
    largest vertex radius about its bounding-box centre, which keeps its size.
    `threshold` is CoACD's concavity tolerance (lower: more, tighter pieces) and
    `max_pieces` its cap on pieces. An existing object of that code is replaced.
    """
    mesh_file = pathlib.Path(mesh_file)
    if scale is not None:
        if not (np.isfinite(scale) and scale > 0):
            raise ConfigError(f"object scale must be a positive number, got {scale!r}")
        bounds.check(scale, "scale", "object scale", ConfigError)
    if not 0 < threshold <= 1:
        raise ConfigError(f"CoACD threshold must be in (0, 1], got {threshold!r}")
    if max_pieces < 1:
        raise ConfigError(f"max_pieces must be at least 1, got {max_pieces!r}")
    code = _check_code(code if code is not None else re.sub(r"[^A-Za-z0-9._-]", "-", mesh_file.stem))
    out_root = pathlib.Path(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise ConfigError(f"{out_root} exists and is not a directory")

    vertices, faces = read_mesh(mesh_file)
    pieces = decompose(vertices, faces, threshold, max_pieces, seed)
    if not pieces:
        raise DataError(f"{mesh_file}: CoACD found no convex piece with a volume")
    points = np.concatenate(pieces)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    radius = float(np.linalg.norm(points - centre, axis=1).max())
    pieces = [(p - centre) / radius for p in pieces]
    if scale is None:
        low, high = bounds.BOUNDS.scale
        if not low <= radius <= high:
            raise DataError(f"{mesh_file}: the mesh's radius is {radius:g} (taken as metres), outside "
                            f"{bounds.range_text('scale')}; for a mesh in other units give the scale "
                            "(--scale), the object's radius in metres")
        scale = radius
    size = np.ptp(np.concatenate(pieces), axis=0) * scale
    bounds.check(float(size.max()), "extent_m", f"{mesh_file}: largest side (m) at scale {scale:g}", DataError)
    mass = assets.DEFAULT_MESH_DENSITY * sum(assets.ConvexPiece(p * scale).volume() for p in pieces)
    bounds.check(mass, "mass_kg", f"{mesh_file}: mass (kg) at scale {scale:g} and density "
                 f"{assets.DEFAULT_MESH_DENSITY:g}", DataError)

    destination = out_root / MESHDATA_DIR / code
    with output_errors(destination):
        destination.parent.mkdir(parents=True, exist_ok=True)
    with staged_directory(destination) as staging:
        staged = pathlib.Path(staging) / "coacd" / "decomposed.obj"
        staged.parent.mkdir(parents=True)
        staged.write_text(obj_text(pieces))
    return ImportedMesh(code, mesh_path(out_root, code), tuple(pieces), float(scale), size)
