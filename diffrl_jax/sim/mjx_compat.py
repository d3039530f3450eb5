"""Every use of MJX's private API, in one place.

MJX exposes no public handle on a few things this project needs: the convex
hull data of mesh geoms (built by `mjx._src.mesh.convex`, stored in the
model's `_impl.mesh_convex`), the contacts of a step (`Data._impl.contact`)
and the point Jacobian (`mjx._src.support.jac`). They are reached here and
nowhere else, so an MJX release that moves them breaks one module.

Importing MJX's private modules prints a banner on some versions; it is
swallowed.
"""

from __future__ import annotations

import contextlib
import functools
import io

import jax


@functools.lru_cache(maxsize=None)
def _private(name: str):
    with contextlib.redirect_stdout(io.StringIO()):
        if name == "mesh":
            from mujoco.mjx._src import mesh as module
        elif name == "types":
            from mujoco.mjx._src import types as module
        else:
            from mujoco.mjx._src import support as module
    return module


def mesh_convex(model, mesh_id: int):
    """MJX's convex data (vert, face, face_normal, edge, edge_face_normal) of mesh `mesh_id`."""
    return _private("mesh").convex(model, int(mesh_id))


def with_convex_meshes(m, pieces, **fields):
    """The MJX model `m` with its mesh geoms' convex data replaced and `fields` set.

    pieces: one dict per mesh slot with vert, face, face_normal, edge and
    edge_face_normal arrays (jittable: the arrays may be tracers).
    """
    convex_mesh = _private("types").ConvexMesh
    convex = tuple(convex_mesh(**piece) for piece in pieces)
    return m.tree_replace({"_impl.mesh_convex": convex, **fields})


def contacts(d):
    """(geom pairs [C, 2], signed distances [C]) of `d`'s contacts, from its last collision pass."""
    contact = d._impl.contact
    return contact.geom, contact.dist


def contact_dist(d) -> jax.Array:
    """Signed distances [C] of `d`'s contacts (negative: penetrating)."""
    return d._impl.contact.dist


def point_jacobian(m, d, point, body):
    """The translational Jacobian [nv, 3] of world `point` attached to `body`."""
    return _private("support").jac(m, d, point, body)[0]
