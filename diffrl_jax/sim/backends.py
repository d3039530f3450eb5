"""One simulator interface, two engines: MJX (accelerators) and MuJoCo C (CPUs).

Every caller that runs physics takes a `Backend` and calls its operations;
none switches on an engine's name. The operations are the project's:

- `hold(template, prepared, grasps)`: the hold test of grasps [n, 31] of one
  object -> `HoldResult` [n] / [n, 6] (numpy);
- `hold_objects(template, prepare, grasps, progress)`: the hold test of many
  objects (a dataset), each with its grasps; MJX packs them into one
  compiled program of `chunk.groups x chunk.group_size` worlds split over
  the devices, the C engine runs them object by object on threads;
- `world_hold_fn(template, fields, prepared)`: the hold test of one world,
  `(object_id [], grasp [31]) -> HoldResult`, callable inside `jit` and
  `vmap` (the refinement environment's step);
- `world_lift_fn(template, fields, prepared)`: the lift of one world,
  `(object_id [], pose [7], world grasp [31]) -> LiftResult`, likewise;
- `settle(template, prepared, key, n)`: resting poses [n, 7] of an object
  dropped on the lift table;
- `lift(template, prepared, poses, world_grasps)`: the lift protocol ->
  `LiftResult` [n] (numpy).

Both engines return the same result types, start from the same JAX targets
(`hold.initial_state`, `lift.initial_state`) and judge through `sim.judge`;
`tests/test_backends.py` holds them to one contract. `get(name)` builds one
from its name ("mjx" or "mujoco"), the form configs and the CLI carry.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import platform
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffrl_jax import configs, parallel
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.errors import ConfigError
from diffrl_jax.runtime import usable_cpus
from diffrl_jax.sim import bank, hold, lift
from diffrl_jax.sim.hold import HoldResult
from diffrl_jax.sim.lift import LiftResult
from diffrl_jax.sim.protocol import NUM_DIRECTIONS

NAMES = ("mjx", "mujoco")

# The hold test of one world: (object_id [], grasp [31]) -> HoldResult [] / [D].
HoldFn = Callable[[jax.Array, jax.Array], HoldResult]
# The lift of one world: (object_id [], object pose [7], world grasp [31]) -> LiftResult [].
LiftFn = Callable[[jax.Array, jax.Array, jax.Array], LiftResult]
Progress = Callable[[int], None]


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    """The fixed batch of the MJX hold program: `groups` objects x `group_size` grasps."""

    groups: int = configs.integer(4, min=1)
    group_size: int = configs.integer(16, min=1)

    def validate(self) -> ChunkConfig:
        return configs.check(self, "chunk")


class Backend(abc.ABC):
    """A physics engine for the hold test, the settle and the lift."""

    name: str
    # Whether its batches split over the local accelerator devices (MJX);
    # the C engine runs on host threads.
    shards_over_devices: bool

    @abc.abstractmethod
    def device_name(self) -> str:
        """Where it runs, in words (for reports)."""

    def device_count(self) -> int | None:
        """Devices a batch is split over (None: host threads)."""
        return None

    @abc.abstractmethod
    def hold(self, template: bank.SimTemplate, prepared: bank.PreparedObject, grasps) -> HoldResult:
        """The hold test of grasps [n, 31] on `prepared`: numpy results [n] / [n, D]."""

    @abc.abstractmethod
    def hold_objects(self, template: bank.SimTemplate, prepare: Callable[[int], bank.PreparedObject],
                     grasps: Sequence[np.ndarray], progress: Progress | None = None
                     ) -> tuple[list[HoldResult], float, float]:
        """The hold test of object i's grasps[i] [n_i, 31] for every i; `prepare(i)` builds object i.

        Returns (results per object, compile seconds, run seconds);
        `progress(k)` after every k grasps judged.
        """

    @abc.abstractmethod
    def world_hold_fn(self, template: bank.SimTemplate, fields: bank.ObjectFields,
                      prepared: Sequence[bank.PreparedObject]) -> HoldFn:
        """The hold test of one world over the stacked objects `fields` [M, ...]
        (`prepared[m]` is object m), callable inside jit and vmap."""

    @abc.abstractmethod
    def world_lift_fn(self, template: lift.LiftTemplate, fields: bank.ObjectFields,
                      prepared: Sequence[bank.PreparedObject]) -> LiftFn:
        """The lift of one world over the stacked objects `fields` [M, ...]
        (`prepared[m]` is object m), callable inside jit and vmap."""

    @abc.abstractmethod
    def settle(self, template: lift.LiftTemplate, prepared: bank.PreparedObject, key: jax.Array,
               n: int) -> np.ndarray:
        """Resting poses [n, 7] of `prepared` dropped `n` times (`lift.drop_poses` of `key`)."""

    @abc.abstractmethod
    def lift(self, template: lift.LiftTemplate, prepared: bank.PreparedObject, poses,
             world_grasps) -> LiftResult:
        """The lifts of world grasps [n, 31] of `prepared` resting at poses [n, 7]: numpy [n]."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _numpy(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


class MJX(Backend):
    """MuJoCo MJX: pure JAX programs, one compile per template and batch shape.

    `chunk`: the batch of the dataset hold program; `mesh`: the devices it is
    split over (default: this process's).
    """

    name = "mjx"
    shards_over_devices = True

    def __init__(self, chunk: ChunkConfig = ChunkConfig(), mesh=None):
        self.chunk = chunk.validate()
        self.mesh = mesh

    def device_name(self) -> str:
        d = jax.devices()[0]
        count = f" x {jax.device_count()}" if jax.device_count() > 1 else ""
        return f"{d.platform} ({d.device_kind}){count}"

    def device_count(self) -> int:
        return jax.device_count()

    def hold(self, template, prepared, grasps, *, pad_to: int | None = None) -> HoldResult:
        """`pad_to` rows (>= n) run, so that callers with varying n share one compile."""
        grasps = np.asarray(grasps, np.float32)
        n = len(grasps)
        padded, _ = parallel.pad_batch(grasps, max(n, pad_to or n, 1))
        fields = bank.stack_fields([template.fields(prepared)])
        out = _numpy(_hold_program(template)(fields, padded[None]))
        return jax.tree_util.tree_map(lambda x: x[0, :n], out)

    def hold_objects(self, template, prepare, grasps, progress=None):
        mesh = parallel.local_mesh() if self.mesh is None else self.mesh
        groups = parallel.padded_size(self.chunk.groups, parallel.num_shards(mesh))
        size = self.chunk.group_size
        fields = [template.fields(prepare(i)) for i in range(len(grasps))]
        items = [(i, s) for i, g in enumerate(grasps) for s in range(0, len(g), size)]
        parts: list[list] = [[] for _ in grasps]
        fn = hold.make_hold_test(template)
        jit_s, run_s, compiled = 0.0, 0.0, None
        for start in range(0, len(items), groups):
            packed = items[start:start + groups]
            real = len(packed)
            packed = packed + [packed[-1]] * (groups - real)
            f = bank.stack_fields([fields[i] for i, _ in packed])
            g = np.zeros((groups, size, grasp_lib.GRASP_DIM), np.float32)
            for k, (i, s) in enumerate(packed):
                rows = grasps[i][s:s + size]
                g[k, :len(rows)] = rows
                g[k, len(rows):] = rows[0]
            f, g = parallel.shard_batch((f, g), mesh)
            if compiled is None:
                t = time.perf_counter()
                compiled = fn.lower(f, g).compile()
                jit_s = time.perf_counter() - t
            t = time.perf_counter()
            result = _numpy(compiled(f, g))
            run_s += time.perf_counter() - t
            done = 0
            for k, (i, s) in enumerate(packed[:real]):
                count = len(grasps[i][s:s + size])
                parts[i].append(jax.tree_util.tree_map(lambda x, k=k, count=count: x[k, :count], result))
                done += count
            if progress:
                progress(done)
        results = [jax.tree_util.tree_map(lambda *x: np.concatenate(x), *p) if p else _empty_hold(0)
                   for p in parts]
        return results, jit_s, run_s

    def world_hold_fn(self, template, fields, prepared=()):
        def fn(object_id, grasp):
            result = hold.hold_object(template, bank.object_fields(fields, object_id), grasp[None])
            return jax.tree_util.tree_map(lambda x: x[0], result)

        return fn

    def world_lift_fn(self, template, fields, prepared=()):
        def fn(object_id, pose, world_grasp):
            return lift.lift(template, bank.object_fields(fields, object_id), pose, world_grasp)

        return fn

    def settle(self, template, prepared, key, n):
        stacked = bank.stack_fields([template.fields(prepared)])
        return np.asarray(_settle_program(template, n)(stacked, jnp.asarray(key)[None]))[0]

    def lift(self, template, prepared, poses, world_grasps):
        stacked = bank.stack_fields([template.fields(prepared)])
        out = _lift_program(template)(stacked, np.asarray(poses, np.float32)[None],
                                            np.asarray(world_grasps, np.float32)[None])
        return jax.tree_util.tree_map(lambda x: x[0], _numpy(out))


# One jitted program per template (and settle count): callers that run object
# after object through the same template trace and compile once.
@functools.lru_cache(maxsize=4)
def _hold_program(template: bank.SimTemplate):
    return hold.make_hold_test(template)


@functools.lru_cache(maxsize=4)
def _lift_program(template: lift.LiftTemplate):
    return lift.make_lift_test(template)


@functools.lru_cache(maxsize=4)
def _settle_program(template: lift.LiftTemplate, n: int):
    return lift.make_settle(template, n)


def _empty_hold(n: int) -> HoldResult:
    d = NUM_DIRECTIONS
    return HoldResult(
        success=np.zeros(n, bool), held=np.zeros((n, d), bool), translation=np.zeros((n, d)),
        rotation=np.zeros((n, d)), contact=np.zeros((n, d), bool), finite=np.zeros((n, d), bool),
        penetration_mm=np.zeros(n), settled=np.zeros((n, grasp_lib.GRASP_DIM)))


class MuJoCo(Backend):
    """MuJoCo's C engine (`mujoco.rollout` on `nthread` threads; default: the usable CPUs).

    The fast path on a CPU; host-side, so its hold test enters jitted code
    through `jax.pure_callback`.
    """

    name = "mujoco"
    shards_over_devices = False

    def __init__(self, nthread: int | None = None):
        from diffrl_jax.sim import mujoco_backend

        self.nthread = None if nthread is None else mujoco_backend.resolve_threads(nthread)

    def device_name(self) -> str:
        return f"cpu ({platform.processor() or platform.machine()}, {usable_cpus()} threads, MuJoCo C)"

    def hold(self, template, prepared, grasps, *, pad_to: int | None = None) -> HoldResult:
        """`pad_to` is ignored: the C engine compiles nothing per batch size."""
        from diffrl_jax.sim import mujoco_backend

        return mujoco_backend.hold_test_mujoco(template, prepared, grasps, nthread=self.nthread)

    def hold_objects(self, template, prepare, grasps, progress=None):
        from diffrl_jax.sim import mujoco_backend

        results, jit_s, run_s = [], 0.0, 0.0
        for i, g in enumerate(grasps):
            prepared = prepare(i)
            if i == 0:  # the shared JAX squeeze targets compile on first use
                t = time.perf_counter()
                mujoco_backend.hold_test_mujoco(template, prepared, g[:1], nthread=self.nthread)
                jit_s = time.perf_counter() - t
            t = time.perf_counter()
            results.append(mujoco_backend.hold_test_mujoco(template, prepared, g, nthread=self.nthread))
            run_s += time.perf_counter() - t
            if progress:
                progress(len(g))
        return results, jit_s, run_s

    def world_hold_fn(self, template, fields, prepared):
        """The squeeze targets are computed in JAX (as for MJX); the physics runs on
        the host through `jax.pure_callback`, which receives the whole vmapped
        batch at once and runs it object by object on the threads."""
        from diffrl_jax.sim import mujoco_backend

        prepared = tuple(prepared)
        if len(prepared) != fields.body_mass.shape[0]:
            raise ValueError(f"{len(prepared)} prepared objects for {fields.body_mass.shape[0]} fields")
        nq, nu = template.scene.model.nq, template.scene.model.nu
        d = NUM_DIRECTIONS
        nthread = self.nthread
        keys = ("success", "held", "translation", "rotation", "contact", "finite", "penetration_mm",
                "settled")

        def host(object_id, qpos, ctrl):
            object_id = np.asarray(object_id)
            batch = object_id.shape
            object_id = object_id.reshape(-1)
            qpos = np.asarray(qpos, np.float64).reshape(-1, nq)
            ctrl = np.asarray(ctrl, np.float64).reshape(-1, nu)
            n = len(object_id)
            out = {"success": np.zeros(n, bool), "held": np.zeros((n, d), bool),
                   "translation": np.zeros((n, d), np.float32), "rotation": np.zeros((n, d), np.float32),
                   "contact": np.zeros((n, d), bool), "finite": np.zeros((n, d), bool),
                   "penetration_mm": np.zeros(n, np.float32),
                   "settled": np.zeros((n, grasp_lib.GRASP_DIM), np.float32)}
            for m in np.unique(object_id):
                rows = np.flatnonzero(object_id == m)
                result = mujoco_backend.hold_test_mujoco(
                    template, prepared[int(m)], np.zeros((len(rows), grasp_lib.GRASP_DIM)),
                    qpos=qpos[rows], ctrl=ctrl[rows], nthread=nthread)
                for key in out:
                    out[key][rows] = np.asarray(getattr(result, key))
            return tuple(out[k].reshape(batch + out[k].shape[1:]) for k in keys)

        def fn(object_id, grasp):
            qpos, ctrl = hold.initial_state(template, bank.object_fields(fields, object_id), grasp[None])
            f32, b = jnp.float32, jnp.bool_
            shapes = (jax.ShapeDtypeStruct((), b), jax.ShapeDtypeStruct((d,), b),
                      jax.ShapeDtypeStruct((d,), f32), jax.ShapeDtypeStruct((d,), f32),
                      jax.ShapeDtypeStruct((d,), b), jax.ShapeDtypeStruct((d,), b),
                      jax.ShapeDtypeStruct((), f32), jax.ShapeDtypeStruct((grasp_lib.GRASP_DIM,), f32))
            out = jax.pure_callback(host, shapes, object_id, qpos[0], ctrl[0],
                                    vmap_method="broadcast_all")
            return HoldResult(*out)

        return fn

    def world_lift_fn(self, template, fields, prepared):
        """The start and the servo targets of every step are computed in JAX (as for
        MJX); the physics runs on the host through `jax.pure_callback`, the whole
        vmapped batch at once, object by object."""
        from diffrl_jax.sim import lift_mujoco

        prepared = tuple(prepared)
        if len(prepared) != fields.body_mass.shape[0]:
            raise ValueError(f"{len(prepared)} prepared objects for {fields.body_mass.shape[0]} fields")
        nq, nu, steps = template.scene.model.nq, template.scene.model.nu, template.protocol.total_steps
        nthread = self.nthread
        keys = ("success", "lift_height", "slip", "rotation", "pushed", "hand_height", "contact", "finite")

        def host(object_id, pose, world_grasp, qpos, ctrl):
            object_id = np.asarray(object_id)
            batch = object_id.shape
            object_id = object_id.reshape(-1)
            pose, world_grasp = np.asarray(pose).reshape(-1, 7), np.asarray(world_grasp).reshape(-1, 31)
            qpos = np.asarray(qpos, np.float64).reshape(-1, nq)
            ctrl = np.asarray(ctrl, np.float64).reshape(-1, steps, nu)
            n = len(object_id)
            out = {k: np.zeros(n, bool if k in ("success", "contact", "finite") else np.float32) for k in keys}
            for m in np.unique(object_id):
                rows = np.flatnonzero(object_id == m)
                result = lift_mujoco.lift_mujoco(template, prepared[int(m)], pose[rows], world_grasp[rows],
                                                 qpos=qpos[rows], ctrl=ctrl[rows], nthread=nthread)
                for key in out:
                    out[key][rows] = np.asarray(getattr(result, key))
            return tuple(out[k].reshape(batch) for k in keys)

        def fn(object_id, pose, world_grasp):
            qpos, ctrl = lift.initial_state(template, bank.object_fields(fields, object_id), pose, world_grasp)
            shapes = tuple(jax.ShapeDtypeStruct((), jnp.bool_ if k in ("success", "contact", "finite")
                                                else jnp.float32) for k in keys)
            out = jax.pure_callback(host, shapes, object_id, pose, world_grasp, qpos, ctrl,
                                    vmap_method="broadcast_all")
            return LiftResult(**dict(zip(keys, out)))

        return fn

    def settle(self, template, prepared, key, n):
        from diffrl_jax.sim import lift_mujoco

        return np.asarray(lift_mujoco.settle_mujoco(template, prepared, key, n, nthread=self.nthread))

    def lift(self, template, prepared, poses, world_grasps):
        from diffrl_jax.sim import lift_mujoco

        return lift_mujoco.lift_mujoco(template, prepared, poses, world_grasps, nthread=self.nthread)

    def __repr__(self) -> str:
        return f"MuJoCo(nthread={self.nthread})"


def get(backend: str | Backend, *, nthread: int | None = None, chunk: ChunkConfig | None = None,
        mesh=None) -> Backend:
    """The backend named `backend` ("mjx" or "mujoco"), or `backend` itself if it is one.

    `nthread` applies to the C engine, `chunk` and `mesh` to MJX.
    """
    if isinstance(backend, Backend):
        return backend
    if backend == "mjx":  # the one place a backend's name is read
        return MJX(chunk or ChunkConfig(), mesh)
    if backend == "mujoco":
        return MuJoCo(nthread)
    raise ConfigError(f"unknown backend {backend!r}; choose one of {list(NAMES)}")


def default_name() -> str:
    """MuJoCo C on a CPU (about 60x faster there), MJX on an accelerator."""
    return "mujoco" if jax.default_backend() == "cpu" else "mjx"
