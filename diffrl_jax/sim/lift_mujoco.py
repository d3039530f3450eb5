"""The lift protocol of `lift.py` on MuJoCo's C engine (`mujoco.rollout` on threads).

Same scene (hand, the object's prepared pieces, the table with its top at
z = 0, gravity on), same start and the same servo targets of every step: they
come from `lift.initial_state` (jitted once per template). Each world is
rolled out open loop for the protocol's `total_steps`; the object's pose
relative to the palm is read at the start of the lift and at the end, and
judged as `lift.lift` judges it. On a CPU this is the fast backend (measured
on 2 cores: ~60,000 world-steps/s, against ~1,000 for MJX).

A world is non-finite (finite False, not a success) when any of its states
is NaN/inf or MuJoCo reset it (its `time` stops increasing: `mujoco.rollout`
stops a world at its first warning and repeats that state). Host-side and
not jittable.
"""

from __future__ import annotations

import functools

import jax
import mujoco
import numpy as np

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError
from diffrl_jax.scene import Scene
from diffrl_jax.sim import judge, lift, mujoco_backend
from diffrl_jax.sim.bank import PreparedObject
from diffrl_jax.sim.lift import LiftResult, LiftTemplate
from diffrl_jax.sim.mujoco_backend import STATE

_BLOCK = 16  # worlds per call of the jitted initial_state (fixed: one compile)
DEFAULT_CHUNK = 64  # worlds per rollout (memory ~ chunk * total_steps * 0.6 KB)
_FIELDS = ("lift_height", "slip", "rotation", "pushed", "hand_height")


@functools.lru_cache(maxsize=16)
def object_scene(template: LiftTemplate, prepared: PreparedObject) -> Scene:
    """The C-engine lift scene of `prepared` under `template`'s protocol (cached)."""
    protocol = template.protocol
    scene = lift.build_lift_scene(protocol, prepared.asset(protocol.physics.friction))
    mujoco_backend.check_layout(scene, template.scene)
    return scene


@functools.lru_cache(maxsize=8)
def _initial_state_fn(template: LiftTemplate):
    one = functools.partial(lift.initial_state, template)
    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


def initial_state(template: LiftTemplate, prepared: PreparedObject, poses, world_grasps):
    """`lift.initial_state` of poses [n, 7] and grasps [n, 31]: qpos [n, nq], ctrl [n, T, nu].

    Worlds go through the jitted function in blocks padded to a fixed size, so
    one compile per template serves every n.
    """
    fn = functools.partial(_initial_state_fn(template), template.fields(prepared))
    return mujoco_backend.in_blocks(fn, _BLOCK, np.asarray(poses, np.float32),
                                    np.asarray(world_grasps, np.float32))


def object_in_palm(template: LiftTemplate, data: mujoco.MjData):
    """As `lift.object_in_palm`: relative COM [3], rotation [3, 3]; world COM [3], palm [3]."""
    palm, obj = template.palm_body, template.scene.object_body
    return (*mujoco_backend.object_in_palm(template.scene, palm, data),
            data.xipos[obj].copy(), data.xpos[palm].copy())


def rollout(template: LiftTemplate, scene: Scene, pool, datas, qpos, ctrl):
    """The open-loop lifts of worlds starting at qpos [n, nq] with servo targets ctrl [n, T, nu].

    Returns (start states [n, nstate], the object in the palm at the start
    per world (as `object_in_palm`), states [n, T, nstate]). Zero warmstarts:
    a world's result depends on nothing but itself.
    """
    model, data = scene.model, datas[0]
    n = len(qpos)
    state0 = np.zeros((n, mujoco.mj_stateSize(model, STATE)))
    start = []
    for i in range(n):
        mujoco.mj_resetData(model, data)
        data.qpos[:] = qpos[i]
        mujoco.mj_kinematics(model, data)
        start.append(object_in_palm(template, data))
        mujoco.mj_getState(model, data, state0[i], STATE)
    states, _ = pool.rollout(model, datas, state0, ctrl, initial_warmstart=np.zeros((n, model.nv)))
    return state0, start, states


def lift_rollout(template: LiftTemplate, prepared: PreparedObject, poses, world_grasps, *,
                 nthread: int | None = None):
    """The lifts `lift_mujoco` judges, as states, for replaying them (`evaluation.render`).

    Same scene, start, servo targets and rollout. Returns (scene, start
    states [n, nstate], states [n, T, nstate]).
    """
    scene = object_scene(template, prepared)
    qpos, ctrl = initial_state(template, prepared, poses, world_grasps)
    nthread = mujoco_backend.resolve_threads(nthread)
    datas = [mujoco.MjData(scene.model) for _ in range(nthread)]
    with mujoco_backend.thread_pool(nthread) as pool:
        state0, _, states = rollout(template, scene, pool, datas, qpos, ctrl)
    return scene, state0, states


def _chunk(template, scene, pool, datas, qpos, ctrl, out, index) -> None:
    """Lifts one block of worlds; writes `out[...][index]`."""
    protocol = template.protocol
    model, data = scene.model, datas[0]
    is_object = judge.geom_mask(model.ngeom, scene.object_geoms)
    is_hand = judge.geom_mask(model.ngeom, scene.hand_geoms)
    state0, start, states = rollout(template, scene, pool, datas, qpos, ctrl)
    finite = mujoco_backend.finite_worlds(state0, states)
    for i in range(len(qpos)):
        at = []
        # The state after `lift_start` steps is the one the lift starts from.
        for state in (states[i, protocol.lift_start - 1], states[i, -1]):
            mujoco.mj_setState(model, data, state, STATE)
            mujoco.mj_kinematics(model, data)
            at.append(object_in_palm(template, data))
        (p0, r0, com0, palm0), (p1, r1, com1, palm1) = at
        # As in MJX, whose last contacts come from the last step's collision pass.
        mujoco.mj_setState(model, data, states[i, -2], STATE)
        mujoco.mj_kinematics(model, data)
        mujoco.mj_collision(model, data)
        touching = np.any(mujoco_backend.hand_object_dist(data, is_object, is_hand) < 0)
        k = index.start + i
        out["contact"][k] = finite[i] and bool(touching)
        out["finite"][k] = finite[i]
        out["lift_height"][k] = com1[2] - com0[2] if finite[i] else -np.inf
        out["slip"][k] = np.linalg.norm(p1 - p0) if finite[i] else np.inf
        out["rotation"][k] = rotations.rotation_angle(r0, r1) if finite[i] else np.inf
        out["pushed"][k] = np.linalg.norm(com0 - start[i][2])
        out["hand_height"][k] = palm1[2] - palm0[2]


@functools.lru_cache(maxsize=8)
def _drop_poses_fn(template: LiftTemplate, n: int):
    return jax.jit(functools.partial(lift.drop_poses, template, n=n))


# Where the hand waits while an object settles: 2 m above the table, out of reach.
_PARKED_HAND_Z = 2.0


def settle_mujoco(template: LiftTemplate, prepared: PreparedObject, key, n: int, *,
                  nthread: int | None = None) -> np.ndarray:
    """`lift.settle_object` on MuJoCo C: resting poses [n, 7] (pos, quat wxyz) of `n` drops.

    The drops are `lift.drop_poses` (the same random orientations and places
    as MJX's for the same key); each then falls onto the table and settles
    for the protocol's `settle_s` in the lift scene, with the hand parked
    2 m above, its servos holding it there. A world that goes non-finite or
    is reset by MuJoCo keeps its release pose (as MJX freezes it).
    """
    if n < 1:
        raise ConfigError(f"number of drops must be at least 1, got {n}")
    nthread = mujoco_backend.resolve_threads(nthread)
    drops = np.asarray(_drop_poses_fn(template, n)(template.fields(prepared), key), np.float64)
    scene = object_scene(template, prepared)
    model = scene.model
    data = mujoco.MjData(model)
    hand = np.zeros(len(scene.hand_qpos))
    hand[2] = _PARKED_HAND_Z
    if model.nu != len(hand):
        raise AssertionError("the lift scene's servos do not match the hand's qpos")
    state0 = np.zeros((n, mujoco.mj_stateSize(model, STATE)))
    for i in range(n):
        mujoco.mj_resetData(model, data)
        data.qpos[scene.hand_qpos] = hand
        data.qpos[scene.object_qpos:scene.object_qpos + 7] = drops[i]
        mujoco.mj_getState(model, data, state0[i], STATE)
    steps = template.protocol.settle_steps
    ctrl = np.broadcast_to(hand, (n, steps, model.nu))
    datas = [mujoco.MjData(model) for _ in range(nthread)]
    with mujoco_backend.thread_pool(nthread) as pool:
        states, _ = pool.rollout(model, datas, state0, ctrl, initial_warmstart=np.zeros((n, model.nv)))
    finite = mujoco_backend.finite_worlds(state0, states)
    qpos_at = 1 + scene.object_qpos  # state = [time, qpos, ...]
    rest = states[:, -1, qpos_at:qpos_at + 7]
    rest = np.where(finite[:, None], rest, drops)
    rest[:, 3:] /= np.linalg.norm(rest[:, 3:], axis=1, keepdims=True)
    return rest


def lift_mujoco(template: LiftTemplate, prepared: PreparedObject, poses, world_grasps, *,
                nthread: int | None = None, chunk: int = DEFAULT_CHUNK, qpos=None, ctrl=None) -> LiftResult:
    """The lift of world grasps [n, 31] of `prepared` resting at poses [n, 7], on MuJoCo C.

    Returns a `LiftResult` of numpy arrays [n], judged as `lift.lift` judges.
    `nthread` rollout threads (default: the CPUs this process may use).
    `qpos` [n, nq] and `ctrl` [n, T, nu] replace `lift.initial_state` (computed
    by the caller, e.g. in JAX before a `pure_callback`).
    """
    poses, world_grasps = np.asarray(poses), np.asarray(world_grasps)
    n = len(poses)
    if poses.shape != (n, 7) or world_grasps.shape != (n, grasp_lib.GRASP_DIM):
        raise ConfigError(f"poses and grasps must have shapes [n, 7] and [n, {grasp_lib.GRASP_DIM}], "
                          f"got {poses.shape} and {world_grasps.shape}")
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1, got {chunk}")
    nthread = mujoco_backend.resolve_threads(nthread)
    protocol = template.protocol
    scene = object_scene(template, prepared)
    out = {name: np.zeros(n) for name in _FIELDS}
    out.update(contact=np.zeros(n, bool), finite=np.zeros(n, bool))
    if (qpos is None) != (ctrl is None):
        raise ConfigError("give both qpos and ctrl, or neither")
    if n:
        if qpos is None:
            qpos, ctrl = initial_state(template, prepared, poses, world_grasps)
        qpos, ctrl = np.asarray(qpos, np.float64), np.asarray(ctrl, np.float64)
        shape = (n, protocol.total_steps, scene.model.nu)
        if qpos.shape != (n, scene.model.nq) or ctrl.shape != shape:
            raise ConfigError(f"qpos/ctrl must have shapes ({n}, {scene.model.nq}) and {shape}, "
                              f"got {qpos.shape} and {ctrl.shape}")
        datas = [mujoco.MjData(scene.model) for _ in range(nthread)]
        with mujoco_backend.thread_pool(nthread) as pool:
            for start in range(0, n, chunk):
                index = slice(start, min(start + chunk, n))
                _chunk(template, scene, pool, datas, qpos[index], ctrl[index], out, index)
    success = judge.lifted(protocol, out["finite"], out["lift_height"], out["slip"])
    return LiftResult(success=success, **out)
