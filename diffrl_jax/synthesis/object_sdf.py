"""An object's signed distance from its convex pieces, differentiable, in pure JAX.

The simulator collides an object's convex pieces, so synthesis measures
distance to exactly those. For one convex piece with outward face planes
`n_f . x = b_f`:

- inside (every plane value negative), the signed distance is the largest
  plane value: the nearest face is the nearest surface point of a convex set;
- outside, it is the distance to the nearest hull triangle (closest point on
  a triangle by Voronoi regions, Ericson's *Real-Time Collision Detection*
  5.1.5), since a plane value only bounds it from below near edges.

The object is the union of its pieces: the smallest piece distance. The
normal is the outward unit direction (plane normal inside, from the closest
point outside). Arrays are padded to a common count per piece (a repeated
plane or triangle changes neither a max nor a min), so one object is a fixed-
shape pytree that jit and vmap accept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffrl_jax.errors import DataError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ObjectSDF:
    """Convex pieces as planes and triangles, in metres (the object at its scale).

    planes:    [P, F, 4] outward unit normal and offset (n . x - b <= 0 inside).
    triangles: [P, T, 3, 3] hull triangles (vertex positions).
    surface:   [M, 3] points sampled on the surface, area-weighted (penetration).
    """

    planes: jax.Array
    triangles: jax.Array
    surface: jax.Array


def object_sdf(pieces: Sequence[np.ndarray], num_surface: int = 1024, seed: int = 0) -> ObjectSDF:
    """Convex pieces (vertex arrays [V_i, 3] in metres) -> an `ObjectSDF` (float32)."""
    from diffrl_jax.objects import assets, encoding  # hulls and surface sampling

    if not pieces:
        raise DataError("the object has no convex pieces")
    hulls = [assets.convex_hull(np.asarray(p, dtype=np.float64)) for p in pieces]
    num_planes = max(len(h.equations) for h in hulls)
    num_triangles = max(len(h.simplices) for h in hulls)
    planes = np.zeros((len(hulls), num_planes, 4))
    triangles = np.zeros((len(hulls), num_triangles, 3, 3))
    for i, hull in enumerate(hulls):
        eq = hull.equations  # n . x + d <= 0 inside, n unit
        rows = np.concatenate([eq[:, :3], -eq[:, 3:]], axis=1)
        planes[i] = rows[np.arange(num_planes) % len(rows)]
        tri = hull.points[hull.simplices]
        triangles[i] = tri[np.arange(num_triangles) % len(tri)]
    vertices, faces = encoding.convex_surface([h.points for h in hulls])
    surface = encoding.surface_points(vertices, faces, num_surface, seed=seed)
    return ObjectSDF(planes=jnp.asarray(planes, jnp.float32), triangles=jnp.asarray(triangles, jnp.float32),
                     surface=jnp.asarray(surface, jnp.float32))


def _safe_div(a, b, ok):
    """a / b where `ok`, else 0; no inf or NaN in either direction (the double-where rule)."""
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


# A triangle whose |ab x ac|^2 is below this fraction of |ab|^2 |ac|^2 (an angle
# under 0.06 degrees: a sliver, as hulls of nearly collinear vertices have) has
# no face region here: float32 barycentrics of a sliver are rounding noise,
# and their gradients overflow. Its edges and vertices still count.
_SLIVER = 1e-6


def closest_point_on_triangle(p: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """The point of triangle (a, b, c) nearest to p; all [..., 3], broadcasting."""
    dot = lambda u, v: jnp.sum(u * v, -1)  # noqa: E731
    ab, ac, bc, ap = b - a, c - a, c - b, p - a
    ab2, ac2, bc2 = dot(ab, ab), dot(ac, ac), dot(bc, bc)
    d1, d2 = dot(ab, ap), dot(ac, ap)
    bp = p - b
    d3, d4 = dot(ab, bp), dot(ac, bp)
    cp = p - c
    d5, d6 = dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = dot(jnp.cross(ab, ac), jnp.cross(ab, ac))  # = va + vb + vc, without the cancellation
    face_ok = denom > jnp.maximum(_SLIVER * ab2 * ac2, 1e-30)
    v, w = _safe_div(vb, denom, face_ok), _safe_div(vc, denom, face_ok)
    point = a + v[..., None] * ab + w[..., None] * ac  # inside the face (a itself for a sliver)
    # Voronoi regions of edges and vertices, lowest priority first. Edge
    # parameters divide by the squared edge length (d1 - d3 = |ab|^2, ...).
    edge_ok = lambda length2: length2 > 1e-30  # noqa: E731
    bc_w = _safe_div(d4 - d3, bc2, edge_ok(bc2))
    point = jnp.where(((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0))[..., None], b + bc_w[..., None] * bc, point)
    point = jnp.where(((vb <= 0) & (d2 >= 0) & (d6 <= 0))[..., None],
                      a + _safe_div(d2, ac2, edge_ok(ac2))[..., None] * ac, point)
    point = jnp.where(((d6 >= 0) & (d5 <= d6))[..., None], c, point)
    point = jnp.where(((vc <= 0) & (d1 >= 0) & (d3 <= 0))[..., None],
                      a + _safe_div(d1, ab2, edge_ok(ab2))[..., None] * ab, point)
    point = jnp.where(((d3 >= 0) & (d4 <= d3))[..., None], b, point)
    point = jnp.where(((d1 <= 0) & (d2 <= 0))[..., None], a, point)
    return point


def plane_distance(sdf: ObjectSDF, points: jax.Array) -> jax.Array:
    """The smallest over pieces of the largest plane value, [N] for world points [N, 3].

    Exact inside the object (minus the depth) and a lower bound of the
    distance outside it (equal where a face, not an edge or corner, is
    nearest), so `relu(r - plane_distance)` never misses a sphere of
    radius r overlapping the object and costs no triangle distances.
    """
    values = jnp.einsum("pfk,nk->npf", sdf.planes[..., :3], points) - sdf.planes[..., 3]
    return jnp.min(jnp.max(values, -1), -1)


def signed_distance(sdf: ObjectSDF, points: jax.Array, candidates: int | None = 3) -> tuple[jax.Array, jax.Array]:
    """World points [N, 3] -> (signed distance [N], outward unit normal [N, 3]) to the object.

    The exact triangle distance is taken to the `candidates` pieces of
    smallest plane value per point (each piece's plane value bounds its
    distance from below, so the nearest piece is almost always among them);
    `None` takes every piece.
    """
    n, offset = sdf.planes[..., :3], sdf.planes[..., 3]  # [P, F, 3], [P, F]
    values = jnp.einsum("pfk,nk->npf", n, points) - offset  # [N, P, F]
    face = jnp.argmax(values, -1)  # [N, P]
    inside = jnp.max(values, -1)  # [N, P]
    num_pieces = inside.shape[1]
    k = num_pieces if candidates is None else min(int(candidates), num_pieces)
    rows = jnp.arange(points.shape[0])
    _, chosen = jax.lax.top_k(-inside, k)  # [N, k] pieces, nearest lower bound first
    tri = sdf.triangles[chosen]  # [N, k, T, 3, 3]
    closest = closest_point_on_triangle(points[:, None, None, :], tri[..., 0, :], tri[..., 1, :],
                                        tri[..., 2, :])  # [N, k, T, 3]
    delta = points[:, None, None, :] - closest
    dist = jnp.sqrt(jnp.sum(delta * delta, -1) + 1e-12)  # [N, k, T]
    nearest = jnp.argmin(dist, -1)  # [N, k]
    outside = jnp.min(dist, -1)
    chosen_inside = jnp.take_along_axis(inside, chosen, 1)  # [N, k]
    piece_sd = jnp.where(chosen_inside > 0, outside, chosen_inside)
    best = jnp.argmin(piece_sd, -1)  # [N] into the k candidates
    sd = piece_sd[rows, best]
    piece = chosen[rows, best]
    face_normal = n[piece, face[rows, piece]]
    out_delta = delta[rows, best, nearest[rows, best]]
    out_normal = out_delta / jnp.sqrt(jnp.sum(out_delta * out_delta, -1, keepdims=True) + 1e-12)
    normal = jnp.where((chosen_inside[rows, best] > 0)[:, None], out_normal, face_normal)
    return sd, normal
