"""Scenes: hand + object (+ optional table) compiled to an `MjModel` and MJX.

The object's frame is the world frame at reset (its free joint starts at the
identity), so a grasp in the object frame sets the wrist joints directly.
Collisions are filtered by bitmask: hand-object, object-table and hand-table;
hand self-collision only when asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io

import mujoco
import numpy as np

from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants
from diffrl_jax.hand import shadow
from diffrl_jax.objects.assets import ConvexPiece, ObjectAsset, Primitive

OBJECT_BODY = "object"
OBJECT_JOINT = "object:free"
TABLE_GEOM = "table"

_SOLVERS = {"newton": mujoco.mjtSolver.mjSOL_NEWTON, "cg": mujoco.mjtSolver.mjSOL_CG}
_CONES = {"pyramidal": mujoco.mjtCone.mjCONE_PYRAMIDAL, "elliptic": mujoco.mjtCone.mjCONE_ELLIPTIC}
_INTEGRATORS = {
        "euler": mujoco.mjtIntegrator.mjINT_EULER,
        "implicitfast": mujoco.mjtIntegrator.mjINT_IMPLICITFAST,
}
_PRIMITIVES = {
        "box": mujoco.mjtGeom.mjGEOM_BOX, "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
        "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER, "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE,
}


@functools.cache
def import_mjx():
    """`mujoco.mjx`, imported without its import-time prints.

    MJX prints "Failed to import warp" to stdout when the optional Warp backend
    is absent, which would corrupt the CLI's `--json` output.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        from mujoco import mjx
    return mjx


def put_model(model: mujoco.MjModel):
    """`mjx.put_model` on this process's first device.

    MJX defaults to `jax.devices()[0]`, which under `jax.distributed` belongs
    to process 0 only; every other process could not use the model.
    """
    import jax

    return import_mjx().put_model(model, device=jax.local_devices()[0])


def blank_data(mjx_model):
    """`mjx.make_data(mjx_model)` with numpy leaves, for use inside jitted code.

    `mjx.make_data` ends with a `device_put` to one device, which inside a
    program sharded over several devices would pin the worlds to that one;
    numpy constants carry no placement.
    """
    import jax

    with jax.ensure_compile_time_eval():  # eager even when first asked for inside a trace
        return jax.device_get(import_mjx().make_data(mjx_model, device=jax.local_devices()[0]))


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Physics and composition options; every field can be overridden."""

    hand: shadow.HandConfig = shadow.HandConfig()
    table: bool = False
    table_clearance: float = 0.0  # m between the object's lowest point and the table top
    table_top: float | None = None  # m, world z of the table top if given (then clearance is unused)
    table_size: tuple[float, float, float] = (0.4, 0.4, 0.02)  # half sizes (m)
    hand_self_collision: bool = False
    timestep: float = 0.004  # s
    gravity: tuple[float, float, float] = (0.0, 0.0, -9.81)
    # MJX-friendly solver: Newton converges in few iterations; few line-search
    # steps; pyramidal cones keep constraint rows fixed in size.
    solver: str = "newton"
    iterations: int = 8
    ls_iterations: int = 8
    cone: str = "pyramidal"
    integrator: str = "implicitfast"
    impratio: float = 1.0
    # MJX allocates contacts for every candidate pair; these caps bound the work
    # (see MJX's `max_contact_points` / `max_geom_pairs` custom numerics).
    max_contact_points: int | None = None
    max_geom_pairs: int | None = None

    def validate(self) -> None:
        if not self.timestep > 0:
            raise ConfigError(f"timestep must be positive, got {self.timestep}")
        for name, table in (("solver", _SOLVERS), ("cone", _CONES), ("integrator", _INTEGRATORS)):
            if getattr(self, name) not in table:
                raise ConfigError(f"{name} must be one of {sorted(table)}, got {getattr(self, name)!r}")
        if self.iterations < 1 or self.ls_iterations < 1:
            raise ConfigError("solver iterations must be at least 1")


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
    """A compiled scene and the indices that simulation code needs.

    qpos layout: hand wrist (6), hand fingers (22), object free joint (7).
    ctrl layout: wrist (6), fingers (22).
    """

    model: mujoco.MjModel
    config: SceneConfig
    object_name: str
    hand_qpos: np.ndarray  # [28] qpos addresses of wrist + finger joints
    object_qpos: int  # address of the object's free joint (pos 3, quat 4)
    object_dof: int  # dof address of the object's free joint (6)
    object_body: int
    hand_geoms: np.ndarray  # collision geoms of the hand
    fingertip_geoms: np.ndarray  # [5] distal phalanx capsules, thumb last
    object_geoms: np.ndarray
    table_geom: int  # -1 without a table

    def mjx_model(self):
        """The MJX (JAX) model of this scene."""
        try:
            return put_model(self.model)
        except NotImplementedError as e:
            raise ConfigError(f"MJX cannot simulate the scene of {self.object_name!r}: {e}") from None


def _add_object(spec: mujoco.MjSpec, obj: ObjectAsset, config: SceneConfig) -> None:
    body = spec.worldbody.add_body(name=OBJECT_BODY)
    body.add_freejoint(name=OBJECT_JOINT)
    density = obj.piece_density()
    affinity = shadow.HAND_BIT | shadow.TABLE_BIT
    for i, piece in enumerate(obj.pieces):
        common = dict(
                name=f"object:{i}", contype=shadow.OBJECT_BIT, conaffinity=affinity,
                density=density, friction=obj.friction, rgba=obj.rgba, condim=config.hand.condim,
        )
        if isinstance(piece, Primitive):
            if piece.type not in _PRIMITIVES:
                raise ConfigError(f"object {obj.name!r}: unknown primitive {piece.type!r}")
            size = tuple(piece.size) + (0.0,) * (3 - len(piece.size))
            body.add_geom(type=_PRIMITIVES[piece.type], size=size, pos=piece.pos,
                                        quat=piece.quat, **common)
        elif isinstance(piece, ConvexPiece):
            mesh_name = f"object:mesh{i}"
            spec.add_mesh(name=mesh_name, uservert=np.asarray(piece.vertices, np.float64).ravel())
            body.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=mesh_name, **common)
        else:
            raise ConfigError(f"object {obj.name!r}: unsupported piece {type(piece).__name__}")


def _lowest_point(obj: ObjectAsset, model: mujoco.MjModel, data: mujoco.MjData) -> float:
    """The object's lowest z (world = object frame at reset) from its AABBs."""
    body = model.body(OBJECT_BODY).id
    lows = []
    for g in np.nonzero(model.geom_bodyid == body)[0]:
        center = data.geom_xpos[g] + data.geom_xmat[g].reshape(3, 3) @ model.geom_aabb[g, :3]
        half = np.abs(data.geom_xmat[g].reshape(3, 3)) @ model.geom_aabb[g, 3:]
        lows.append(center[2] - half[2])
    return float(min(lows))


def build_spec(obj: ObjectAsset, config: SceneConfig = SceneConfig()) -> mujoco.MjSpec:
    """An `MjSpec` of hand + object (+ table) with the configured options."""
    config.validate()
    spec = mujoco.MjSpec()
    spec.compiler.degree = False  # joint ranges are radians
    spec.modelname = f"shadow_hand_{obj.name}"
    spec.option.timestep = config.timestep
    spec.option.gravity = config.gravity
    spec.option.solver = _SOLVERS[config.solver]
    spec.option.iterations = config.iterations
    spec.option.ls_iterations = config.ls_iterations
    spec.option.cone = _CONES[config.cone]
    spec.option.integrator = _INTEGRATORS[config.integrator]
    spec.option.impratio = config.impratio
    spec.worldbody.add_light(name="top", pos=(0, 0, 1.5), dir=(0, 0, -1), type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL)
    shadow.add_hand(spec, config.hand)
    if config.hand_self_collision:
        for g in spec.geoms:
            if g.contype == shadow.HAND_BIT:
                g.conaffinity |= shadow.HAND_BIT
    _add_object(spec, obj, config)
    for name, value in (("max_contact_points", config.max_contact_points),
                                            ("max_geom_pairs", config.max_geom_pairs)):
        if value is not None:
            spec.add_numeric(name=name, data=[value])
    if config.table:
        top = config.table_top
        if top is None:  # under the object's lowest point (needs a compile)
            probe = spec.compile()
            data = mujoco.MjData(probe)
            mujoco.mj_kinematics(probe, data)
            top = _lowest_point(obj, probe, data) - config.table_clearance
        sx, sy, sz = config.table_size
        spec.worldbody.add_geom(
                name=TABLE_GEOM, type=mujoco.mjtGeom.mjGEOM_BOX, size=(sx, sy, sz),
                pos=(0, 0, top - sz), contype=shadow.TABLE_BIT,
                conaffinity=shadow.HAND_BIT | shadow.OBJECT_BIT, rgba=(0.6, 0.5, 0.4, 1),
                friction=(1.0, 0.005, 0.0001), condim=config.hand.condim,
        )
    return spec


def build_scene(obj: ObjectAsset, config: SceneConfig = SceneConfig()) -> Scene:
    """Compiles hand + object (+ table) and caches the indices simulation needs."""
    spec = build_spec(obj, config)
    try:
        model = spec.compile()
    except ValueError as e:  # MuJoCo reports bad geometry as ValueError
        raise ConfigError(f"could not compile the scene for {obj.name!r}: {e}") from None
    hand_joints = shadow.WRIST_JOINT_NAMES + constants.JOINT_NAMES
    hand_qpos = np.array([model.jnt_qposadr[model.joint(n).id] for n in hand_joints])
    object_body = model.body(OBJECT_BODY).id
    object_joint = model.joint(OBJECT_JOINT).id
    palm_tree = model.body_rootid == model.body(constants.ROOT_BODY).id
    hand_geoms = np.nonzero(palm_tree[model.geom_bodyid] & (model.geom_contype != 0))[0]
    return Scene(
            model=model,
            config=config,
            object_name=obj.name,
            hand_qpos=hand_qpos,
            object_qpos=int(model.jnt_qposadr[object_joint]),
            object_dof=int(model.jnt_dofadr[object_joint]),
            object_body=object_body,
            hand_geoms=hand_geoms,
            fingertip_geoms=np.array([model.geom(n).id for n in constants.FINGERTIP_GEOMS]),
            object_geoms=np.nonzero(model.geom_bodyid == object_body)[0],
            table_geom=model.geom(TABLE_GEOM).id if config.table else -1,
    )
