"""Objects as data: a fixed geometry budget so many objects share one program.

MJX compiles collision code per mesh *shape* (its convex functions expect
static sizes), so a scene per object would compile once per object. Instead,
every object is brought to the same budget -- at most `pieces` convex pieces,
each with exactly `vertices` hull vertices, `faces` faces of `face_vertices`
corners and `edges` edges (padding repeats real entries, which changes no
support function) -- and the per-object model fields become arrays
(`ObjectFields`). A template scene with `pieces` mesh slots then simulates any
object: `world_model(template, fields)` swaps the fields in, inside jit/vmap.

Piece vertices are stored in the object frame (geom pose = identity), so a
piece needs no per-object geom pose. Unused slots hold a tiny piece 10 m below
the object, where nothing reaches it. Objects with more pieces than the budget
have their closest pieces merged (hull of the union): a loss of concavity that
`PreparedObject.merged` reports.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence
from typing import Generic, TypeVar

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct
from scipy import spatial

from diffrl_jax import configs
from diffrl_jax.configs import integer
from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants, shadow
from diffrl_jax.objects import assets
from diffrl_jax.scene import Scene, SceneConfig, blank_data, build_scene, put_model
from diffrl_jax.sim import mjx_compat
from diffrl_jax.sim.protocol import HoldProtocol

PAD_PIECE = np.array([[0.0, 0.0, -10.0], [0.01, 0.0, -10.0], [0.0, 0.01, -10.0], [0.0, 0.0, -9.99]])


@dataclasses.dataclass(frozen=True)
class ObjectBudget:
    """Fixed sizes of object geometry; one compiled program per budget."""

    pieces: int = integer(32, min=1)
    vertices: int = integer(32, min=4)  # per piece; hulls with more are capped (farthest points)
    faces: int = integer(60, min=1)  # a hull of V vertices has at most 2V - 4 faces
    face_vertices: int = integer(20, min=3, max=20)  # MJX merges coplanar triangles into polygons of up to 20
    edges: int = integer(90, min=1)  # at most 3V - 6

    def validate(self) -> "ObjectBudget":
        configs.check(self, "object budget")
        if self.faces < 2 * self.vertices - 4 or self.edges < 3 * self.vertices - 6:
            raise ConfigError(
                f"object budget: {self.vertices} hull vertices need faces >= {2 * self.vertices - 4} "
                f"and edges >= {3 * self.vertices - 6}, got {self.faces} and {self.edges}")
        return self


class ObjectFields(struct.PyTreeNode):
    """Per-object model fields; a leading batch axis stacks objects.

    vert: [P, V, 3], face: [P, F, C, 3], face_normal: [P, F, 3], edge: [P, E, 2],
    edge_face_normal: [P, E, 2, 3] (MJX `ConvexMesh` per piece, object frame);
    geom_rbound: [P]; body_*: [nbody, ...] and dof_invweight0: [nv] of the whole
    scene (the object changes mass, subtree mass and inverse weights).
    """

    vert: jax.Array
    face: jax.Array
    face_normal: jax.Array
    edge: jax.Array
    edge_face_normal: jax.Array
    geom_rbound: jax.Array
    body_mass: jax.Array
    body_inertia: jax.Array
    body_ipos: jax.Array
    body_iquat: jax.Array
    body_invweight0: jax.Array
    body_subtreemass: jax.Array
    dof_invweight0: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedObject:
    """An object brought to a budget: its pieces (object frame) and mass properties."""

    name: str
    pieces: tuple[np.ndarray, ...]  # [V_i, 3] hull vertices, object frame, metres
    mass: float
    merged: int  # pieces merged away to fit the budget
    convex: dict  # padded MJX convex arrays, see ObjectFields

    def asset(self, friction: float) -> assets.ObjectAsset:
        """The object as an `ObjectAsset` of exactly these pieces and mass."""
        return assets.ObjectAsset(
            self.name, tuple(assets.ConvexPiece(p) for p in self.pieces), mass=self.mass,
            friction=(friction, 0.005, 0.0001))


def _merge_to(pieces: list[np.ndarray], limit: int, max_vertices: int) -> list[np.ndarray]:
    pieces = list(pieces)
    while len(pieces) > limit:
        centres = np.stack([p.mean(0) for p in pieces])
        dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        np.fill_diagonal(dist, np.inf)
        i, j = np.unravel_index(np.argmin(dist), dist.shape)
        union = assets.cap_hull(np.concatenate([pieces[i], pieces[j]]), max_vertices)
        pieces = [p for k, p in enumerate(pieces) if k not in (i, j)] + [union]
    return pieces


def _object_only_model(pieces: Sequence[np.ndarray], density: float) -> mujoco.MjModel:
    spec = mujoco.MjSpec()
    body = spec.worldbody.add_body(name="object")
    body.add_freejoint()
    for i, verts in enumerate(pieces):
        spec.add_mesh(name=f"mesh{i}", uservert=np.asarray(verts, np.float64).ravel())
        body.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"mesh{i}", density=density)
    try:
        return spec.compile()
    except ValueError as e:
        raise ConfigError(f"could not compile object pieces: {e}") from None


def _pad(array: np.ndarray, size: int, axis: int, what: str) -> np.ndarray:
    n = array.shape[axis]
    if n > size:
        raise ConfigError(f"object budget too small: {n} {what} > {size}")
    if n == size:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, size - n)
    return np.pad(array, pad, mode="edge")


def _convex_arrays(model: mujoco.MjModel, budget: ObjectBudget) -> dict:
    """MJX convex data of every mesh of `model`, moved to the body frame and padded."""
    out = {k: [] for k in ("vert", "face", "face_normal", "edge", "edge_face_normal", "geom_rbound")}
    for g in range(model.ngeom):
        c = jax.tree_util.tree_map(np.asarray, mjx_compat.mesh_convex(model, model.geom_dataid[g]))
        rot = np.zeros(9)
        mujoco.mju_quat2Mat(rot, model.geom_quat[g])
        rot, pos = rot.reshape(3, 3), model.geom_pos[g]
        vert = c.vert @ rot.T + pos
        face = _pad(_pad(c.face @ rot.T + pos, budget.face_vertices, 1, "face corners"),
                    budget.faces, 0, "faces")
        out["vert"].append(_pad(vert, budget.vertices, 0, "hull vertices"))
        out["face"].append(face)
        out["face_normal"].append(_pad(c.face_normal @ rot.T, budget.faces, 0, "faces"))
        out["edge"].append(_pad(c.edge.astype(np.int32), budget.edges, 0, "edges"))
        out["edge_face_normal"].append(_pad(c.edge_face_normal @ rot.T, budget.edges, 0, "edges"))
        out["geom_rbound"].append(np.linalg.norm(vert, axis=-1).max())
    return {k: np.stack(v) for k, v in out.items()}


def prepare_object(obj: assets.ObjectAsset, budget: ObjectBudget = ObjectBudget(),
                   density: float | None = None, mass_scale: float = 1.0) -> PreparedObject:
    """Caps, merges and pads `obj` to `budget`; mass from its mass or density.

    `density` (if given) replaces the object's own density for objects without
    a fixed mass; `mass_scale` multiplies the mass (a heavier scenario).
    """
    budget.validate()
    from diffrl_jax.data.example import object_mesh_pieces  # primitives -> point sets

    raw = [assets.cap_hull(p, budget.vertices) for p in object_mesh_pieces(obj)]
    pieces = _merge_to(raw, budget.pieces, budget.vertices)
    volume = sum(spatial.ConvexHull(p).volume for p in pieces)
    mass = obj.mass if obj.mass is not None else (density or obj.density) * volume
    mass *= mass_scale
    model = _object_only_model(pieces + [PAD_PIECE] * (budget.pieces - len(pieces)), 1.0)
    convex = _convex_arrays(model, budget)
    # Mass properties from the real pieces only, at the density giving `mass`.
    real = _object_only_model(pieces, mass / volume)
    convex["mass"] = np.array(real.body_mass[1])
    convex["inertia"] = real.body_inertia[1].copy()
    convex["ipos"] = real.body_ipos[1].copy()
    convex["iquat"] = real.body_iquat[1].copy()
    return PreparedObject(obj.name, tuple(pieces), float(real.body_mass[1]), len(raw) - len(pieces), convex)


# The protocol a template was built for: `HoldProtocol` here, `lift.LiftProtocol`
# for `lift.LiftTemplate`. Code shared by both reads only what they share
# (`physics`, `squeeze`).
ProtocolT = TypeVar("ProtocolT")


@dataclasses.dataclass(frozen=True, eq=False)
class SimTemplate(Generic[ProtocolT]):
    """The template scene of a protocol and budget, and its MJX model.

    Object geoms are mesh slots 0..P-1 (MJX data ids equal slot numbers).
    """

    scene: Scene
    mjx_model: object  # mjx.Model
    budget: ObjectBudget
    protocol: ProtocolT
    palm_body: int

    @functools.cached_property
    def blank_data(self):
        """`mjx.make_data` of the template as numpy (placement-free inside jit)."""
        return blank_data(self.mjx_model)

    def fields(self, prepared: PreparedObject) -> ObjectFields:
        """`ObjectFields` (numpy) of one prepared object in this template."""
        model = self.scene.model
        body = self.scene.object_body
        probe = copy.deepcopy(model)
        probe.body_mass[body] = prepared.convex["mass"]
        probe.body_inertia[body] = prepared.convex["inertia"]
        probe.body_ipos[body] = prepared.convex["ipos"]
        probe.body_iquat[body] = prepared.convex["iquat"]
        mujoco.mj_setConst(probe, mujoco.MjData(probe))
        c = prepared.convex
        return ObjectFields(
            vert=c["vert"], face=c["face"], face_normal=c["face_normal"], edge=c["edge"],
            edge_face_normal=c["edge_face_normal"], geom_rbound=c["geom_rbound"],
            body_mass=probe.body_mass.copy(), body_inertia=probe.body_inertia.copy(),
            body_ipos=probe.body_ipos.copy(), body_iquat=probe.body_iquat.copy(),
            body_invweight0=probe.body_invweight0.copy(),
            body_subtreemass=probe.body_subtreemass.copy(),
            dof_invweight0=probe.dof_invweight0.copy(),
        )


def scene_config(protocol: HoldProtocol) -> SceneConfig:
    """The scene physics of a protocol: no gravity (the pull is a force)."""
    physics = protocol.physics
    hand = shadow.HandConfig(finger_kp=physics.finger_kp, strength=physics.finger_strength,
                             friction=(physics.friction, 0.005, 0.0001))
    return SceneConfig(hand=hand, timestep=physics.timestep, gravity=(0.0, 0.0, 0.0),
                       impratio=physics.impratio, max_contact_points=physics.max_contacts)


def template_scene(budget: ObjectBudget, friction: float, build) -> Scene:
    """`build(pad)` of a placeholder object with `budget.pieces` mesh slots (ids 0..P-1) at the origin.

    The scene every object of the budget is swapped into (`world_model`).
    """
    pad = assets.ObjectAsset(
        "template", tuple(assets.ConvexPiece(PAD_PIECE) for _ in range(budget.pieces)),
        mass=0.1, friction=(friction, 0.005, 0.0001))
    scene = build(pad)
    model = scene.model
    slots = model.geom_dataid[scene.object_geoms]
    if not np.array_equal(slots, np.arange(budget.pieces)):
        raise AssertionError(f"object mesh slots {slots} are not 0..{budget.pieces - 1}")
    model.geom_pos[scene.object_geoms] = 0.0
    model.geom_quat[scene.object_geoms] = (1.0, 0.0, 0.0, 0.0)
    return scene


def make_template(protocol: HoldProtocol, budget: ObjectBudget = ObjectBudget()) -> SimTemplate[HoldProtocol]:
    """Builds the template scene (`budget.pieces` mesh slots) for `protocol`."""
    protocol.validate()
    budget.validate()
    scene = template_scene(budget, protocol.physics.friction, lambda pad: build_scene(pad, scene_config(protocol)))
    model = scene.model
    mjx_model = put_model(model)
    return SimTemplate(scene, mjx_model, budget, protocol, model.body(constants.ROOT_BODY).id)


def object_fields(fields: ObjectFields, object_id) -> ObjectFields:
    """The fields of one object of a stack [M, ...] (jittable: object_id may be traced)."""
    return jax.tree_util.tree_map(lambda x: x[object_id], fields)


def stack_fields(fields: Sequence[ObjectFields]) -> ObjectFields:
    """Stacks per-object fields along a new leading axis (numpy)."""
    return jax.tree_util.tree_map(lambda *x: np.stack(x), *fields)


def world_model(template: SimTemplate, fields: ObjectFields):
    """The MJX model of `template` with one object's `fields` swapped in (jittable)."""
    m = template.mjx_model
    geoms = jnp.asarray(template.scene.object_geoms)
    rbound = jnp.asarray(m.geom_rbound).at[geoms].set(fields.geom_rbound)
    return mjx_compat.with_convex_meshes(
        m, convex_pieces(fields, template.budget.pieces),
        geom_rbound=rbound,
        body_mass=fields.body_mass,
        body_inertia=fields.body_inertia,
        body_ipos=fields.body_ipos,
        body_iquat=fields.body_iquat,
        body_invweight0=fields.body_invweight0,
        body_subtreemass=fields.body_subtreemass,
        dof_invweight0=fields.dof_invweight0)


def convex_pieces(fields: ObjectFields, pieces: int) -> list[dict]:
    """The convex data of each of an object's `pieces` mesh slots (for `mjx_compat`)."""
    names = ("vert", "face", "face_normal", "edge", "edge_face_normal")
    return [{name: getattr(fields, name)[p] for name in names} for p in range(pieces)]
