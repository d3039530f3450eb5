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
from scipy import spatial

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


def _hull(points: np.ndarray) -> spatial.ConvexHull:
    try:
        return spatial.ConvexHull(points)
    except spatial.QhullError:
        return spatial.ConvexHull(points, qhull_options="QJ")


def object_sdf(pieces: Sequence[np.ndarray], num_surface: int = 1024, seed: int = 0) -> ObjectSDF:
    """Convex pieces (vertex arrays [V_i, 3] in metres) -> an `ObjectSDF` (float32)."""
    from diffrl_jax.objects import encoding  # surface sampling

    if not pieces:
        raise DataError("the object has no convex pieces")
    hulls = [_hull(np.asarray(p, dtype=np.float64)) for p in pieces]
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


def _safe_div(a, b):
    ok = jnp.abs(b) > 1e-20
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


def closest_point_on_triangle(p: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """The point of triangle (a, b, c) nearest to p; all [..., 3], broadcasting."""
    dot = lambda u, v: jnp.sum(u * v, -1)  # noqa: E731
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = dot(ab, ap), dot(ac, ap)
    bp = p - b
    d3, d4 = dot(ab, bp), dot(ac, bp)
    cp = p - c
    d5, d6 = dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = va + vb + vc
    v, w = _safe_div(vb, denom), _safe_div(vc, denom)
    point = a + v[..., None] * ab + w[..., None] * ac  # inside the face
    # Voronoi regions of edges and vertices, lowest priority first.
    bc_w = _safe_div(d4 - d3, (d4 - d3) + (d5 - d6))
    point = jnp.where(((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0))[..., None], b + bc_w[..., None] * (c - b), point)
    point = jnp.where(((vb <= 0) & (d2 >= 0) & (d6 <= 0))[..., None], a + _safe_div(d2, d2 - d6)[..., None] * ac, point)
    point = jnp.where(((d6 >= 0) & (d5 <= d6))[..., None], c, point)
    point = jnp.where(((vc <= 0) & (d1 >= 0) & (d3 <= 0))[..., None], a + _safe_div(d1, d1 - d3)[..., None] * ab, point)
    point = jnp.where(((d3 >= 0) & (d4 <= d3))[..., None], b, point)
    point = jnp.where(((d1 <= 0) & (d2 <= 0))[..., None], a, point)
    return point


def signed_distance(sdf: ObjectSDF, points: jax.Array) -> tuple[jax.Array, jax.Array]:
    """World points [N, 3] -> (signed distance [N], outward unit normal [N, 3]) to the object."""
    n, offset = sdf.planes[..., :3], sdf.planes[..., 3]  # [P, F, 3], [P, F]
    values = jnp.einsum("pfk,nk->npf", n, points) - offset  # [N, P, F]
    face = jnp.argmax(values, -1)  # [N, P]
    inside = jnp.max(values, -1)
    tri = sdf.triangles  # [P, T, 3, 3]
    closest = closest_point_on_triangle(points[:, None, None, :], tri[None, :, :, 0], tri[None, :, :, 1],
                                        tri[None, :, :, 2])  # [N, P, T, 3]
    delta = points[:, None, None, :] - closest
    dist = jnp.sqrt(jnp.sum(delta * delta, -1) + 1e-12)  # [N, P, T]
    nearest = jnp.argmin(dist, -1)  # [N, P]
    outside = jnp.min(dist, -1)
    piece_sd = jnp.where(inside > 0, outside, inside)  # [N, P]
    piece = jnp.argmin(piece_sd, -1)  # [N]
    rows = jnp.arange(points.shape[0])
    sd = piece_sd[rows, piece]
    face_normal = n[piece, face[rows, piece]]
    out_delta = delta[rows, piece, nearest[rows, piece]]
    out_normal = out_delta / jnp.sqrt(jnp.sum(out_delta * out_delta, -1, keepdims=True) + 1e-12)
    normal = jnp.where((inside[rows, piece] > 0)[:, None], out_normal, face_normal)
    return sd, normal
