"""A generated library of household objects: many shapes, no downloads.

DexGraspNet's meshes need a download; a policy that generalises needs
hundreds of shapes. This module makes them from a seed: eight families of
hand-sized objects (largest side 5-25 cm, none under 1 cm, 30-600 g), each
a few convex pieces, written in DexGraspNet's layout so every tool that reads
DexGraspNet meshes reads these too.

Object i is drawn from a generator seeded by `(seed, i)` alone, so a library
of 500 starts with the library of 10, and its family is `FAMILIES[i % 8]`, so
every prefix of eight objects has one of each. Every piece is stored as the
vertices of its own convex hull, at most `assets.DEFAULT_MAX_HULL_VERTICES`
of them (the simulated cap, so what is written is what is simulated), and in
normalised units like DexGraspNet's meshes: centred on the bounding box and
divided by the largest vertex radius, which is the object's `scale`.

The mass is log-uniform in 30-600 g, narrowed to what densities of 60-1500
kg/m^3 (a cardboard box to solid plastic) give at the object's volume; only
an object too small or too large for both ranges leaves the density range.
`density` is the mass over the pieces' summed volume, the volume
`assets.mesh_object` gives the written mesh, so loading a mesh at its `scale`
and `density` gives back its `mass_kg`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np

from diffrl_jax import bounds
from diffrl_jax.data.dexgraspnet import write_mesh
from diffrl_jax.data.example import obj_text
from diffrl_jax.errors import DataError
from diffrl_jax.files import write_json_atomic
from diffrl_jax.objects import assets

MANIFEST = "library.json"
FAMILIES = ("superquadric", "rounded_box", "prism", "mug", "rimmed", "frustum", "ellipsoid", "composite")
MASS_KG = (0.03, 0.6)
DENSITY_KG_M3 = (60.0, 1500.0)  # preferred, see the module docstring
MAX_PIECES = 8
MIN_SIDE_M = 0.01  # the thinnest bounding-box side; a thinner disc or plate is drawn larger
_MANIFEST_KEYS = ("family", "scale", "mass_kg", "density", "n_pieces")


@dataclasses.dataclass(frozen=True, eq=False)
class LibraryObject:
    """A generated object.

    pieces:  convex pieces, each its hull's vertices `[V_i, 3]` (V_i <= 32) in
             normalised units: centred, largest vertex radius 1.
    scale:   metres per mesh unit (the object's largest vertex radius, m).
    mass_kg: the mass; `density` (kg/m^3) gives it to the pieces' summed volume.
    """

    code: str
    family: str
    pieces: tuple[np.ndarray, ...]
    scale: float
    mass_kg: float
    density: float

    def asset(self) -> assets.ObjectAsset:
        """The object in metres, as `assets.mesh_object` loads it from its written mesh."""
        return assets.ObjectAsset(self.code, tuple(assets.ConvexPiece(p * self.scale) for p in self.pieces),
                                  density=self.density)


# ----------------------------------------------------------------------------
# Families. Each returns convex point sets in arbitrary units with the family's
# proportions; `_make_object` sizes the whole to a drawn largest side.


def _fibonacci_sphere(n: int) -> np.ndarray:
    """`[n, 3]` nearly even unit vectors."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    ring = np.sqrt(1 - z**2)
    angle = np.pi * (3.0 - np.sqrt(5.0)) * k
    return np.stack([ring * np.cos(angle), ring * np.sin(angle), z], axis=-1)


def _signed_power(x: np.ndarray, exponent: float) -> np.ndarray:
    return np.sign(x) * np.abs(x) ** exponent


def _superquadric(rng: np.random.Generator) -> list[np.ndarray]:
    """A superellipsoid: exponents below 1 boxy, 1 an ellipsoid, above 1 pinched (still convex)."""
    axes = np.array([1.0, *rng.uniform(0.4, 1.0, 2)])
    e1, e2 = rng.uniform(0.3, 1.5, 2)
    eta, omega = np.meshgrid(np.linspace(-np.pi / 2, np.pi / 2, 11), np.linspace(-np.pi, np.pi, 20, endpoint=False))
    cos_eta = _signed_power(np.cos(eta), e1)
    points = np.stack([cos_eta * _signed_power(np.cos(omega), e2),
                       cos_eta * _signed_power(np.sin(omega), e2),
                       _signed_power(np.sin(eta), e1)], axis=-1).reshape(-1, 3)
    return [points * axes]


def _rounded_box(rng: np.random.Generator) -> list[np.ndarray]:
    """A box with rounded corners: per corner, its three face points and its diagonal (32 vertices)."""
    half = np.array([1.0, *rng.uniform(0.25, 1.0, 2)])
    radius = rng.uniform(0.1, 0.45) * half.min()
    octant = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / math.sqrt(3)] * 3])
    points = [s * (half - radius + radius * octant)
              for s in np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])]
    return [np.concatenate(points)]


def _prism(rng: np.random.Generator) -> list[np.ndarray]:
    """A regular prism, triangular to 16-sided (a cylinder), flat disc to tall rod."""
    sides = int(rng.choice([3, 4, 5, 6, 8, 10, 12, 16]))
    height_over_diameter = math.exp(rng.uniform(math.log(0.25), math.log(3.0)))
    return [assets.prism(1.0, height_over_diameter, sides=sides).vertices]


def _tube_segment(start: np.ndarray, end: np.ndarray, radius: float, sides: int = 8) -> np.ndarray:
    """Hull points of an octagonal rod from `start` to `end` in the x-z plane, lengthened by `radius`
    at both ends so consecutive segments overlap at their joints."""
    direction = (end - start) / np.linalg.norm(end - start)
    across = np.array([0.0, 1.0, 0.0])
    normal = np.cross(direction, across)
    angle = 2 * np.pi * np.arange(sides) / sides
    ring = radius * (np.cos(angle)[:, None] * across + np.sin(angle)[:, None] * normal)
    return np.concatenate([start - radius * direction + ring, end + radius * direction + ring])


def _mug(rng: np.random.Generator) -> list[np.ndarray]:
    """A solid cylindrical body with a handle on +x: a half-ellipse of 3-5 rods, room for fingers inside."""
    half_height = rng.uniform(0.8, 1.6)  # body radius 1
    body = assets.prism(1.0, half_height).vertices
    thickness = rng.uniform(0.1, 0.18)
    reach = rng.uniform(0.55, 0.85)  # beyond the arc's ends, which sit inside the wall
    span = rng.uniform(0.35, min(0.65, 0.9 * half_height - thickness))  # half the handle's height
    room = half_height - span - thickness
    segments = int(rng.integers(3, 6))
    centre = np.array([rng.uniform(0.8, 0.95), 0.0, rng.uniform(-0.5, 0.5) * room])
    angle = np.linspace(-np.pi / 2, np.pi / 2, segments + 1)
    arc = centre + np.stack([reach * np.cos(angle), np.zeros_like(angle), span * np.sin(angle)], axis=-1)
    return [body] + [_tube_segment(arc[j], arc[j + 1], thickness) for j in range(segments)]


def _rimmed(rng: np.random.Generator) -> list[np.ndarray]:
    """A cylinder with a wider lip at the top (a jar, a lidded tin) and sometimes a foot (a spool)."""
    sides = int(rng.choice([12, 16]))
    half_height = rng.uniform(0.6, 2.5)  # body radius 1
    lip_radius = rng.uniform(1.1, 1.35)
    lip_half = rng.uniform(0.06, 0.15) * half_height
    pieces = [assets.prism(1.0, half_height, sides=sides).vertices,
              assets.prism(lip_radius, lip_half, (0, 0, half_height - lip_half), sides=sides).vertices]
    if rng.uniform() < 0.5:
        foot_half = rng.uniform(0.5, 1.0) * lip_half
        pieces.append(assets.prism(rng.uniform(1.05, lip_radius), foot_half,
                                   (0, 0, foot_half - half_height), sides=sides).vertices)
    return pieces


def _frustum(rng: np.random.Generator) -> list[np.ndarray]:
    """A cone or a frustum of a regular pyramid, 8 to 16 sides."""
    sides = int(rng.choice([8, 12, 16]))
    top_over_bottom = rng.uniform(-0.3, 0.9)  # up to 0: a cone with one apex vertex
    half_height = rng.uniform(0.4, 2.5)  # bottom radius 1
    angle = 2 * np.pi * np.arange(sides) / sides
    ring = np.stack([np.cos(angle), np.sin(angle), np.full(sides, -half_height)], axis=-1)
    if top_over_bottom <= 0.0:
        top = np.array([[0.0, 0.0, half_height]])
    else:
        top = ring * [top_over_bottom, top_over_bottom, -1.0]
    return [np.concatenate([ring, top])]


def _ellipsoid(rng: np.random.Generator) -> list[np.ndarray]:
    """An ellipsoid through 32 nearly even points (an egg, a soap bar, a ball)."""
    return [_fibonacci_sphere(assets.DEFAULT_MAX_HULL_VERTICES) * [1.0, *rng.uniform(0.35, 1.0, 2)]]


def _composite(rng: np.random.Generator) -> list[np.ndarray]:
    """2-4 overlapping hulls of random points: each is centred inside an earlier one, and holds its
    own centre (its points come in opposite pairs about it), so the union is one connected body."""
    pieces: list[np.ndarray] = []
    for _ in range(int(rng.integers(2, 5))):
        if pieces:
            host = pieces[int(rng.integers(len(pieces)))]
            host_centre = host.mean(axis=0)
            corner = host[int(rng.integers(len(host)))]
            centre = host_centre + rng.uniform(0.5, 0.9) * (corner - host_centre)
        else:
            centre = np.zeros(3)
        axes = rng.uniform(0.3, 1.0, 3)
        directions = rng.normal(size=(int(rng.integers(5, 11)), 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        radii = rng.uniform(0.4, 1.0, (len(directions), 2))
        points = np.concatenate([directions * radii[:, :1], -directions * radii[:, 1:]]) * axes
        pieces.append(assets.cap_hull(centre + points, assets.DEFAULT_MAX_HULL_VERTICES))
    return pieces


# family -> (the shape's proportions, its largest side range in metres)
_FAMILY_SHAPES = {
    "superquadric": (_superquadric, (0.05, 0.20)),
    "rounded_box": (_rounded_box, (0.05, 0.25)),
    "prism": (_prism, (0.05, 0.25)),
    "mug": (_mug, (0.08, 0.16)),
    "rimmed": (_rimmed, (0.06, 0.22)),
    "frustum": (_frustum, (0.05, 0.22)),
    "ellipsoid": (_ellipsoid, (0.05, 0.20)),
    "composite": (_composite, (0.06, 0.22)),
}


def hull_vertices(points: np.ndarray) -> np.ndarray:
    """`[V, 3]` the vertices of the hull of `points`, at most `assets.DEFAULT_MAX_HULL_VERTICES`,
    capped again until each is a vertex of their own hull (so the OBJ writer and
    `assets.mesh_object`, which keep hull vertices only, keep them all)."""
    while True:
        capped = assets.cap_hull(points, assets.DEFAULT_MAX_HULL_VERTICES)
        if len(capped) == len(points):
            return points
        points = capped


def _make_object(seed: int, index: int) -> LibraryObject:
    family = FAMILIES[index % len(FAMILIES)]
    shape, (side_low, side_high) = _FAMILY_SHAPES[family]
    rng = np.random.default_rng([seed, index])
    pieces = [hull_vertices(np.asarray(p, dtype=np.float64)) for p in shape(rng)]
    points = np.concatenate(pieces)
    low, high = points.min(axis=0), points.max(axis=0)
    centre = (low + high) / 2
    radius = float(np.linalg.norm(points - centre, axis=1).max())
    sides = high - low
    largest = max(rng.uniform(side_low, side_high), MIN_SIDE_M * sides.max() / sides.min())  # fingers need 1 cm
    scale = largest / sides.max() * radius  # metres per mesh unit
    pieces = tuple((p - centre) / radius for p in pieces)
    volume = sum(assets.ConvexPiece(p * scale).volume() for p in pieces)
    mass_low, mass_high = np.clip(np.array(DENSITY_KG_M3) * volume, *MASS_KG)
    mass = float(np.clip(math.exp(rng.uniform(math.log(mass_low), math.log(mass_high))), mass_low, mass_high))
    return LibraryObject(f"gen-{family.replace('_', '-')}-{index:04d}", family, pieces,
                         float(scale), mass, mass / volume)


def generate_library(n: int, seed: int = 0) -> list[LibraryObject]:
    """`n` objects, object i a pure function of `(seed, i)` of family `FAMILIES[i % 8]`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [_make_object(seed, index) for index in range(n)]


def write_library(objects: list[LibraryObject], root) -> pathlib.Path:
    """Writes each object's mesh to `root/meshdata/<code>/coacd/decomposed.obj` (one `o` group per
    piece) and then the manifest `root/library.json` (code -> family, scale, mass_kg, density,
    n_pieces), every file atomically; returns the manifest's path.

    The manifest comes last, so one that exists names only meshes already written.
    """
    root = pathlib.Path(root)
    for obj in objects:
        write_mesh(root, obj.code, obj_text(list(obj.pieces)))
    manifest = root / MANIFEST
    write_json_atomic(manifest, {
        obj.code: {"family": obj.family, "scale": obj.scale, "mass_kg": obj.mass_kg,
                   "density": obj.density, "n_pieces": len(obj.pieces)}
        for obj in objects
    })
    return manifest


def load_library_manifest(root) -> dict[str, dict]:
    """`root/library.json`: code -> {family, scale, mass_kg, density, n_pieces}, every entry checked
    (its keys, and scale, mass and density against `bounds.BOUNDS`); DataError naming the file."""
    path = pathlib.Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"library manifest not found: {path} (written by `diffrl data library`)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected an object of code -> entry, got {type(manifest).__name__}")
    for code, entry in manifest.items():
        if not isinstance(entry, dict) or sorted(entry) != sorted(_MANIFEST_KEYS):
            raise DataError(f"{path}: entry {code!r} must have exactly the keys {list(_MANIFEST_KEYS)}")
        numbers = [entry[key] for key in _MANIFEST_KEYS[1:]]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
            raise DataError(f"{path}: entry {code!r}: {list(_MANIFEST_KEYS[1:])} must be numbers")
        bounds.check(entry["scale"], "scale", f"{path}: scale of {code!r}", DataError)
        bounds.check(entry["mass_kg"], "mass_kg", f"{path}: mass (kg) of {code!r}", DataError)
        bounds.check(entry["density"], "density_kg_m3", f"{path}: density of {code!r}", DataError)
    return manifest
