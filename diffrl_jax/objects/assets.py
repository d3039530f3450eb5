"""Graspable objects: built-in primitive shapes and DexGraspNet convex meshes.

An object is a rigid body made of pieces in its own frame (metres): analytic
primitives (fast everywhere) or convex hulls (one mesh geom each, as MuJoCo
and MJX collide meshes through their convex hull anyway). Hulls are capped to
a vertex budget that MJX handles well; capping keeps the extreme points
(farthest-point sampling on the hull), so the capped hull lies inside the
original and its surface moves by at most the sagitta of the dropped facets.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
from scipy import spatial

from diffrl_jax import bounds
from diffrl_jax.errors import ConfigError, DataError

DEFAULT_MESH_DENSITY = 500.0  # kg / m^3, DexGraspNet's validation density
DEFAULT_MAX_HULL_VERTICES = 32  # MJX: convex-convex collisions are best below 32


@dataclasses.dataclass(frozen=True)
class Primitive:
    """An analytic geom: type in {box, sphere, cylinder, capsule}, MuJoCo sizes."""

    type: str
    size: tuple[float, ...]
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)

    def volume(self) -> float:
        s = self.size
        if self.type == "box":
            return 8.0 * s[0] * s[1] * s[2]
        if self.type == "sphere":
            return 4.0 / 3.0 * math.pi * s[0] ** 3
        if self.type == "cylinder":
            return math.pi * s[0] ** 2 * 2.0 * s[1]
        if self.type == "capsule":
            return math.pi * s[0] ** 2 * 2.0 * s[1] + 4.0 / 3.0 * math.pi * s[0] ** 3
        raise ConfigError(f"unknown primitive type {self.type!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class ConvexPiece:
    """A convex piece given by its hull vertices `[V, 3]` in the object frame."""

    vertices: np.ndarray

    def volume(self) -> float:
        return float(convex_hull(self.vertices).volume)


@dataclasses.dataclass(frozen=True, eq=False)
class ObjectAsset:
    """A rigid object: its pieces and its mass properties.

    Exactly one of `mass` (kg, spread uniformly over the pieces' volume) and
    `density` (kg/m^3) is used; `mass` wins when given.
    """

    name: str
    pieces: tuple[Primitive | ConvexPiece, ...]
    density: float = DEFAULT_MESH_DENSITY
    mass: float | None = None
    friction: tuple[float, float, float] = (1.0, 0.005, 0.0001)
    rgba: tuple[float, float, float, float] = (0.3, 0.55, 0.85, 1.0)

    def volume(self) -> float:
        return sum(p.volume() for p in self.pieces)

    def piece_density(self) -> float:
        """Density giving every piece the same density and the object its mass."""
        if self.mass is None:
            return self.density
        return self.mass / self.volume()

    def surface_points(self) -> np.ndarray:
        """Vertices of convex pieces (`[V, 3]`); empty for primitive-only objects."""
        verts = [p.vertices for p in self.pieces if isinstance(p, ConvexPiece)]
        return np.concatenate(verts) if verts else np.zeros((0, 3))


# ----------------------------------------------------------------------------
# Built-in objects: household sizes and masses, no files. Round sections are
# convex prisms, not cylinders: MJX has no cylinder-box collision (the palm is
# boxes), while every hand primitive collides with convex meshes.


def prism(radius: float, half_height: float, pos=(0.0, 0.0, 0.0), sides: int = 16) -> ConvexPiece:
    """A convex `sides`-gon prism approximating a z-aligned cylinder.

    The polygon is circumscribed at mid-edge radius `radius`, so the prism's
    flats touch the cylinder's surface.
    """
    angle = 2 * np.pi * (np.arange(sides) + 0.5) / sides
    r = radius / np.cos(np.pi / sides)
    ring = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=-1)
    top = np.concatenate([ring, np.full((sides, 1), half_height)], axis=-1)
    bottom = np.concatenate([ring, np.full((sides, 1), -half_height)], axis=-1)
    return ConvexPiece(np.concatenate([top, bottom]) + np.asarray(pos, dtype=np.float64))


def _box() -> ObjectAsset:  # a small food box: 5 x 7 x 12 cm, 200 g
    return ObjectAsset("box", (Primitive("box", (0.025, 0.035, 0.06)),), mass=0.2)


def _cylinder() -> ObjectAsset:  # a drinks can: 6.6 cm x 12 cm, 250 g
    return ObjectAsset("cylinder", (prism(0.033, 0.06),), mass=0.25)


def _sphere() -> ObjectAsset:  # a baseball: 7 cm, 145 g
    return ObjectAsset("sphere", (Primitive("sphere", (0.035,)),), mass=0.145)


def _bottle() -> ObjectAsset:  # a 0.5 l bottle: 7 cm body, 22 cm tall, 300 g
    return ObjectAsset(
            "bottle",
            (
                    prism(0.035, 0.07, (0, 0, -0.04)),
                    prism(0.024, 0.015, (0, 0, 0.045)),
                    prism(0.014, 0.02, (0, 0, 0.08)),
                    prism(0.016, 0.01, (0, 0, 0.105)),
            ),
            mass=0.3,
    )


def _mug(n_wall: int = 12) -> ObjectAsset:
    """A mug: 8 cm wide, 9.5 cm tall, a wall of boxes, a handle of capsules, 300 g."""
    r, half_h, wall = 0.04, 0.0475, 0.006
    pieces: list[Primitive | ConvexPiece] = [prism(r, 0.004, (0, 0, -half_h + 0.004))]
    half_w = (r - wall / 2) * math.tan(math.pi / n_wall) + 1e-3
    for i in range(n_wall):
        a = 2 * math.pi * i / n_wall
        pos = ((r - wall / 2) * math.cos(a), (r - wall / 2) * math.sin(a), 0.0)
        quat = (math.cos(a / 2), 0.0, 0.0, math.sin(a / 2))
        pieces.append(Primitive("box", (wall / 2, half_w, half_h), pos, quat))
    # Handle on +x: two horizontal struts and a vertical grip.
    pieces += [
            Primitive("capsule", (0.006, 0.012), (r + 0.012, 0, 0.03), (0.7071068, 0, 0.7071068, 0)),
            Primitive("capsule", (0.006, 0.012), (r + 0.012, 0, -0.03), (0.7071068, 0, 0.7071068, 0)),
            Primitive("capsule", (0.006, 0.03), (r + 0.024, 0, 0.0)),
    ]
    return ObjectAsset("mug", tuple(pieces), mass=0.3)


BUILTIN_OBJECTS = {
        "box": _box, "cylinder": _cylinder, "sphere": _sphere,
        "bottle": _bottle, "mug": _mug,
}


def builtin_object(name: str) -> ObjectAsset:
    """A built-in object by name (see `BUILTIN_OBJECTS`); no files needed."""
    if name not in BUILTIN_OBJECTS:
        raise ConfigError(
                f"unknown built-in object {name!r}; choose one of {sorted(BUILTIN_OBJECTS)}"
        )
    return BUILTIN_OBJECTS[name]()


# ----------------------------------------------------------------------------
# DexGraspNet meshes.


def read_obj_pieces(path: str | pathlib.Path) -> list[np.ndarray]:
    """Vertices `[V_i, 3]` of each `o` group of a CoACD `decomposed.obj`."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"mesh file not found: {path}")
    pieces: list[list[list[float]]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("o "):
                    pieces.append([])
                elif line.startswith("v "):
                    if not pieces:  # vertices before any group: one implicit piece
                        pieces.append([])
                    parts = line.split()
                    if len(parts) < 4:
                        raise DataError(f"{path}:{lineno}: a vertex needs three coordinates")
                    pieces[-1].append([float(x) for x in parts[1:4]])
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: not a readable OBJ file ({e})") from None
    arrays = [np.asarray(p, dtype=np.float64) for p in pieces if p]
    if not arrays:
        raise DataError(f"{path}: no vertices found")
    for a in arrays:
        if not np.all(np.isfinite(a)):
            raise DataError(f"{path}: non-finite vertex coordinates")
    for index, a in enumerate(arrays):
        bounds.check(len(a), "piece_vertices", f"{path}: vertex count of convex piece {index} (from 0)", DataError)
    bounds.check(sum(map(len, arrays)), "object_vertices", f"{path}: vertex count", DataError)
    return arrays


def convex_hull(vertices: np.ndarray) -> spatial.ConvexHull:
    """The hull of a point set `[V, 3]`; a flat or tiny one joggled to a (thin) volume MuJoCo accepts."""
    try:
        return spatial.ConvexHull(vertices)
    except spatial.QhullError:
        return spatial.ConvexHull(vertices, qhull_options="QJ")


def cap_hull(vertices: np.ndarray, max_vertices: int | None) -> np.ndarray:
    """Hull vertices of a point set, at most `max_vertices` of them.

    Farthest-point sampling over the hull's vertices, seeded with the point
    farthest from the centroid, keeps the extremes of the piece.
    """
    hull = convex_hull(vertices)
    pts = vertices[hull.vertices]
    if max_vertices is None or len(pts) <= max_vertices:
        return pts
    if max_vertices < 4:
        raise ConfigError(f"max_hull_vertices must be at least 4, got {max_vertices}")
    chosen = [int(np.argmax(np.linalg.norm(pts - pts.mean(0), axis=1)))]
    dist = np.linalg.norm(pts - pts[chosen[0]], axis=1)
    for _ in range(max_vertices - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
    return pts[np.sort(chosen)]


# Thinnest extent of a convex piece, relative to its widest, below which it is
# flat, a line or a point: MuJoCo cannot hull it ("coplanar vertices"), while it
# accepts pieces 1e-10 thin. The sample's thinnest CoACD piece is 0.07.
_MIN_RELATIVE_THICKNESS = 1e-12


def _convex_piece(path, index: int, vertices: np.ndarray, max_hull_vertices: int | None) -> ConvexPiece:
    """Piece `index` of the OBJ `path` as a capped hull; DataError if it spans no volume."""
    spans = np.linalg.svd(vertices - vertices.mean(axis=0), compute_uv=False)  # along principal axes
    if len(spans) < 3 or not spans[2] > _MIN_RELATIVE_THICKNESS * spans[0]:
        raise DataError(
            f"{path}: convex piece {index} (from 0) is flat, a line or a point: "
            f"its {len(vertices)} vertices span no volume"
        )
    try:
        return ConvexPiece(cap_hull(vertices, max_hull_vertices))
    except spatial.QhullError as error:  # even joggled (QJ): qhull gives up on the piece
        reason = str(error).strip().splitlines()[0]
        raise DataError(f"{path}: convex piece {index} (from 0) has no convex hull: {reason}") from None


def mesh_object(
        path: str | pathlib.Path,
        scale: float,
        name: str | None = None,
        density: float = DEFAULT_MESH_DENSITY,
        max_hull_vertices: int | None = DEFAULT_MAX_HULL_VERTICES,
) -> ObjectAsset:
    """A DexGraspNet object: one convex piece per `o` group of `path`, times `scale`.

    DexGraspNet meshes are normalised (about unit radius); the physical object
    is the mesh multiplied by the grasp's `scale`.
    """
    if not (np.isfinite(scale) and scale > 0):
        raise DataError(f"object scale must be a positive number, got {scale!r}")
    if not (np.isfinite(density) and density > 0):
        raise ConfigError(f"object density must be positive, got {density!r}")
    path = pathlib.Path(path)
    bounds.check(scale, "scale", f"{path}: object scale", ConfigError)  # a flag or config; files are checked on load
    bounds.check(density, "density_kg_m3", "object density", ConfigError)
    scaled = [v * scale for v in read_obj_pieces(path)]
    points = np.concatenate(scaled)
    bounds.check(float(np.ptp(points, axis=0).max()), "extent_m",
                 f"{path}: largest bounding-box side (m) at scale {scale:g}", DataError)
    pieces = tuple(_convex_piece(path, index, v, max_hull_vertices) for index, v in enumerate(scaled))
    if name is None:
        # .../meshdata/<code>/coacd/decomposed.obj
        name = path.parent.parent.name if path.parent.name == "coacd" else path.stem
    obj = ObjectAsset(name, pieces, density=density)
    bounds.check(density * obj.volume(), "mass_kg",
                 f"{path}: object mass (kg) at scale {scale:g} and density {density:g}", DataError)
    return obj
