"""The hold test of `hold.py` on MuJoCo's C engine (`mujoco.rollout` on threads).

Same protocol, same object, same start: the scene is the hand and the object's
prepared pieces (`PreparedObject.asset`) with the protocol's physics
(`bank.scene_config`, no gravity), and the placement and finger targets come
from `hold.initial_state` (jitted once per template), so both backends servo to
identical targets. Then, per grasp:

* placement: `mj_forward` at the grasp (qvel 0, time 0) gives the deepest
  hand-object penetration and the object's pose relative to the palm;
* settle: `settle_steps` with the servo targets and no external force (one
  world per grasp); where it leaves hand and object is the `settled` grasp;
* pull: `hold_steps` from the settled state with a constant force
  `object mass * acceleration * direction` at the object's COM
  (`xfrc_applied` of the object body, world frame = object frame at reset),
  one world per grasp and direction;
* judgement, as in `hold.py`: the object's COM translation and rotation
  relative to the palm body since placement must stay under the protocol's
  bounds, the world must stay finite, the placement's penetration must be
  within `penetration_bound_m`, and (if required) a hand-object contact
  must remain. As in MJX, whose final contacts come from the collision pass of
  the last step, the contact flag is computed at the state before the last step.

A world is non-finite (finite False, translation/rotation inf, not held) when
any of its states is NaN/inf or MuJoCo reset it (its `time` stops increasing:
`mujoco.rollout` stops a world at its first warning and repeats that state).
A settle failure fails all six directions of the grasp. Grasps whose initial
state is not finite are never simulated (penetration NaN, nothing held); no
world affects another, and results do not depend on the batch or the threads.

MuJoCo prints its warnings (and appends them to MUJOCO_LOG.TXT in the working
directory) through its global warning handler; this module leaves that alone.
"""

from __future__ import annotations

import functools
import threading

import jax
import mujoco
import numpy as np
from mujoco import rollout

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.errors import ConfigError
from diffrl_jax.runtime import usable_cpus
from diffrl_jax.scene import Scene, build_scene
from diffrl_jax.sim import bank, hold, judge
from diffrl_jax.sim.bank import PreparedObject, SimTemplate
from diffrl_jax.sim.hold import HoldResult
from diffrl_jax.sim.protocol import DIRECTIONS, NUM_DIRECTIONS

# The state the C engine rolls out and reads back: time, qpos, qvel, act, ...
STATE = mujoco.mjtState.mjSTATE_FULLPHYSICS.value
_CONTROL = mujoco.mjtState.mjSTATE_CTRL.value | mujoco.mjtState.mjSTATE_XFRC_APPLIED.value
DEFAULT_CHUNK = 32  # grasps per rollout batch (6x as many pull worlds)
_INIT_BLOCK = 32  # grasps per call of the jitted initial_state (fixed: one compile)


@functools.lru_cache(maxsize=16)
def object_scene(template: SimTemplate, prepared: PreparedObject) -> Scene:
    """The C-engine scene of `prepared` under `template`'s protocol (cached).

    Its qpos/ctrl layout is the template's, so `hold.initial_state` applies.
    """
    protocol = template.protocol
    scene = build_scene(prepared.asset(protocol.physics.friction), bank.scene_config(protocol))
    check_layout(scene, template.scene)
    return scene


def check_layout(scene: Scene, ref: Scene) -> None:
    """Asserts that `scene` has the qpos/qvel/ctrl layout of the template scene `ref`.

    Per-object C scenes are built apart from the template, and the jitted
    start states of the template are written into them by index.
    """
    same = (scene.model.nq == ref.model.nq and scene.model.nv == ref.model.nv
            and scene.model.nu == ref.model.nu and scene.object_body == ref.object_body
            and scene.object_qpos == ref.object_qpos
            and np.array_equal(scene.hand_qpos, ref.hand_qpos))
    if not same:
        raise AssertionError("object scene and template differ in qpos/ctrl layout")


@functools.lru_cache(maxsize=8)
def _initial_state_fn(template: SimTemplate):
    return jax.jit(functools.partial(hold.initial_state, template))


def initial_state(template: SimTemplate, prepared: PreparedObject,
                  grasps) -> tuple[np.ndarray, np.ndarray]:
    """`hold.initial_state` for grasps [n, 31]: qpos [n, nq], ctrl [n, nu] (float64).

    Grasps go through the jitted function in blocks padded to a fixed size, so
    one compile per template serves every n, and a grasp's targets do not
    depend on n or on the other grasps (XLA rounds differently per shape).
    """
    fn = functools.partial(_initial_state_fn(template), template.fields(prepared))
    return in_blocks(fn, _INIT_BLOCK, np.asarray(grasps, np.float32))


def in_blocks(fn, block: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """`fn(*arrays)` computed `block` rows at a time, the last block padded.

    The jitted `fn` then sees one shape (one compile for every n), and a row's
    output does not depend on n or on its neighbours. Outputs come back as
    float64 numpy arrays with the rows of the inputs (n >= 1).
    """
    n = len(arrays[0])
    outs = []
    for start in range(0, n, block):
        rows = [a[start:start + block] for a in arrays]
        real = len(rows[0])
        padded = [np.concatenate([r, np.repeat(r[:1], block - real, 0)]) for r in rows]
        outs.append([np.asarray(o, np.float64)[:real] for o in fn(*padded)])
    return tuple(np.concatenate(parts) for parts in zip(*outs))


def hand_object_dist(data: mujoco.MjData, is_object: np.ndarray, is_hand=None) -> np.ndarray:
    """Distances of the hand-object contacts of `data` (after collision).

    is_object (and is_hand, where the scene has more than hand and object):
    [ngeom] masks from `judge.geom_mask`.
    """
    n = data.ncon
    con = data.contact
    pairs = judge.hand_object_pairs(con.geom1[:n], con.geom2[:n], is_object, is_hand)
    return con.dist[:n][pairs]


def object_in_palm(scene: Scene, palm: int, data: mujoco.MjData):
    """Object COM in the palm frame [3] and object rotation in the palm frame [3, 3]."""
    obj = scene.object_body
    return judge.object_in_palm(data.xpos[palm], data.xmat[palm].reshape(3, 3),
                                data.xipos[obj], data.xmat[obj].reshape(3, 3))


def finite_worlds(state0: np.ndarray, states: np.ndarray) -> np.ndarray:
    """[W] no NaN/inf and `time` strictly increasing over every step (no reset)."""
    times = np.concatenate([state0[:, None, 0], states[:, :, 0]], axis=1)
    monotonic = np.all(np.diff(times, axis=1) > 0, axis=1)
    return monotonic & np.all(np.isfinite(states), axis=(1, 2))


def resolve_threads(nthread: int | None) -> int:
    """Rollout threads: `nthread`, or the CPUs this process may use when None."""
    nthread = usable_cpus() if nthread is None else int(nthread)
    if nthread < 1:
        raise ConfigError(f"nthread must be at least 1, got {nthread}")
    return nthread


def thread_pool(nthread: int) -> rollout.Rollout:
    """A `mujoco.rollout` pool of `nthread` threads (one thread runs on the caller's)."""
    return rollout.Rollout(nthread=nthread if nthread > 1 else 0)


class _Workspace:
    """Control and state buffers reused by every rollout.

    Constant controls still have to be spelled out per step for `rollout`
    (nstep x (nu + 6 nbody) numbers per world); filling fresh arrays for each
    batch costs page faults worth ~10% of the physics of a simple object, so
    each thread keeps its buffers between calls (~50 MB for 32 grasps of the
    strict protocol; dropped after a call that needed more than `_KEEP_BYTES`).
    """

    def __init__(self):
        self._buffers = {}

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size)
        return buf[:size].reshape(shape)


_LOCAL = threading.local()
_KEEP_BYTES = 256 << 20  # workspaces up to this size stay allocated between calls


def _workspace() -> _Workspace:
    """This thread's workspace, kept between calls (page faults cost like physics)."""
    work = getattr(_LOCAL, "work", None)
    if work is None:
        work = _LOCAL.work = _Workspace()
    return work


def _run(pool, model, datas, work, state0, warm0, control, steps):
    """Rolls out worlds with constant controls [W, ncontrol]: states [W, steps, nstate]."""
    w = len(state0)
    tiled = work.array("control", (w, steps, control.shape[-1]))
    tiled[...] = control[:, None]
    state = work.array("state", (w, steps, state0.shape[-1]))
    pool.rollout([model] * w, datas, np.ascontiguousarray(state0), tiled,
                 control_spec=_CONTROL, skip_checks=True, nstep=steps,
                 initial_warmstart=np.ascontiguousarray(warm0), state=state)
    return state


def _chunk(template, scene, pool, datas, work, qpos, ctrl, out, index):
    """The hold test of one block of grasps; writes `out[...][index]`."""
    protocol = template.protocol
    model, data = scene.model, datas[0]
    palm, obj = template.palm_body, scene.object_body
    is_object = judge.geom_mask(model.ngeom, scene.object_geoms)
    nstate = mujoco.mj_stateSize(model, STATE)
    ncontrol = mujoco.mj_stateSize(model, _CONTROL)
    n = len(qpos)

    # Placement.
    valid = np.all(np.isfinite(qpos), axis=1) & np.all(np.isfinite(ctrl), axis=1)
    state0 = np.zeros((n, nstate))
    warm0 = np.zeros((n, model.nv))
    pos0 = np.zeros((n, 3))
    rot0 = np.tile(np.eye(3), (n, 1, 1))
    penetration = np.full(n, np.nan)
    for i in np.nonzero(valid)[0]:
        mujoco.mj_resetData(model, data)
        data.qpos[:] = qpos[i]
        data.ctrl[:] = ctrl[i]
        mujoco.mj_forward(model, data)
        penetration[i] = judge.penetration_mm(hand_object_dist(data, is_object))
        pos0[i], rot0[i] = object_in_palm(scene, palm, data)
        mujoco.mj_getState(model, data, state0[i], STATE)
        if np.all(np.isfinite(data.qacc)):
            warm0[i] = data.qacc  # what mj_step would leave as qacc_warmstart
    valid &= np.all(np.isfinite(state0), axis=1)

    # Controls: servo targets, plus the pull force on the object body.
    base = np.zeros((n, ncontrol))
    base[:, :model.nu] = ctrl
    xfrc = model.nu + 6 * obj  # xfrc_applied of the object: force (3), torque (3)

    # Settle.
    settled, warm = state0, warm0
    ok = valid.copy()
    settled_qpos = np.where(valid[:, None], qpos, np.nan)  # no settle: the placement
    go = np.nonzero(valid)[0]
    if protocol.settle_steps > 0 and len(go):
        states = _run(pool, model, datas, work, state0[go], warm0[go], base[go], protocol.settle_steps)
        settled = state0.copy()
        settled[go] = states[:, -1]
        ok[go] = finite_worlds(state0[go], states)
        settled_qpos[go] = np.nan
        warm = np.zeros_like(warm0)
        for i in go[ok[go]]:  # the warmstart the last settle step would hand on
            mujoco.mj_setState(model, data, settled[i], STATE)
            settled_qpos[i] = data.qpos
            data.ctrl[:] = ctrl[i]
            data.xfrc_applied[:] = 0.0
            data.qacc_warmstart[:] = 0.0
            mujoco.mj_forward(model, data)
            if np.all(np.isfinite(data.qacc)):
                warm[i] = data.qacc

    # Pull: one world per (grasp, direction).
    go = np.nonzero(ok)[0]
    d = NUM_DIRECTIONS
    finite = np.zeros((n, d), bool)
    translation = np.full((n, d), np.inf)
    rotation = np.full((n, d), np.inf)
    contact = np.zeros((n, d), bool)
    if len(go):
        mass = model.body_mass[obj]
        force = mass * protocol.acceleration * np.asarray(DIRECTIONS)  # [D, 3]
        control = np.repeat(base[go], d, axis=0)
        control[:, xfrc:xfrc + 3] = np.tile(force, (len(go), 1))
        start = np.repeat(settled[go], d, axis=0)
        states = _run(pool, model, datas, work, start, np.repeat(warm[go], d, axis=0), control,
                      protocol.hold_steps)
        healthy = finite_worlds(start, states).reshape(len(go), d)
        final = states[:, -1]
        before = states[:, -2] if protocol.hold_steps > 1 else start
        pos = np.zeros((len(go) * d, 3))
        rot = np.tile(np.eye(3), (len(go) * d, 1, 1))
        touch = np.zeros(len(go) * d, bool)
        for k in np.nonzero(healthy.ravel())[0]:
            mujoco.mj_setState(model, data, final[k], STATE)
            mujoco.mj_kinematics(model, data)
            pos[k], rot[k] = object_in_palm(scene, palm, data)
            mujoco.mj_setState(model, data, before[k], STATE)
            mujoco.mj_kinematics(model, data)
            mujoco.mj_collision(model, data)
            touch[k] = np.any(hand_object_dist(data, is_object) < 0)
        pos = pos.reshape(len(go), d, 3)
        rot = rot.reshape(len(go), d, 3, 3)
        finite[go] = healthy
        translation[go] = np.where(
            healthy, np.linalg.norm(pos - pos0[go, None], axis=-1), np.inf)
        rotation[go] = np.where(
            healthy, rotations.rotation_angle(np.broadcast_to(rot0[go, None], rot.shape), rot), np.inf)
        contact[go] = touch.reshape(len(go), d) & healthy

    held = judge.held(protocol, finite, translation, rotation, penetration, contact)
    out["held"][index] = held
    out["translation"][index] = translation
    out["rotation"][index] = rotation
    out["contact"][index] = contact
    out["finite"][index] = finite
    out["penetration_mm"][index] = penetration
    out["settled"][index] = hold.grasps_from_qpos(template, settled_qpos)


def hold_test_mujoco(template: SimTemplate, prepared: PreparedObject, grasps, *,
                     nthread: int | None = None, qpos=None, ctrl=None,
                     chunk: int = DEFAULT_CHUNK) -> HoldResult:
    """The hold test of grasps [n, 31] on `prepared` with MuJoCo's C engine.

    Returns a `HoldResult` of numpy arrays: success/penetration_mm [n],
    held/translation/rotation/contact/finite [n, 6] (directions in
    `protocol.DIRECTIONS` order), judged as `hold.hold_object` judges them.
    `qpos` [n, nq] and `ctrl` [n, nu] replace `hold.initial_state` (e.g. to
    reuse the MJX backend's); `nthread` rollout threads (default: the CPUs this
    process may use); `chunk` grasps per rollout (memory ~ chunk * 6 *
    hold_steps * 2 KB).
    """
    grasps = np.asarray(grasps)
    if grasps.ndim != 2 or grasps.shape[1] != grasp_lib.GRASP_DIM:
        raise ConfigError(f"grasps must have shape [n, {grasp_lib.GRASP_DIM}], got {grasps.shape}")
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1, got {chunk}")
    n = len(grasps)
    scene = object_scene(template, prepared)
    model = scene.model
    if (qpos is None) != (ctrl is None):
        raise ConfigError("give both qpos and ctrl, or neither")
    if qpos is None:
        qpos, ctrl = initial_state(template, prepared, grasps) if n else (
            np.zeros((0, model.nq)), np.zeros((0, model.nu)))
    qpos = np.asarray(qpos, np.float64)
    ctrl = np.asarray(ctrl, np.float64)
    if qpos.shape != (n, model.nq) or ctrl.shape != (n, model.nu):
        raise ConfigError(f"qpos/ctrl must have shapes ({n}, {model.nq}) and ({n}, {model.nu}), "
                          f"got {qpos.shape} and {ctrl.shape}")
    nthread = resolve_threads(nthread)
    d = NUM_DIRECTIONS
    out = {"held": np.zeros((n, d), bool), "translation": np.zeros((n, d)),
           "rotation": np.zeros((n, d)), "contact": np.zeros((n, d), bool),
           "finite": np.zeros((n, d), bool), "penetration_mm": np.zeros(n),
           "settled": np.zeros((n, grasp_lib.GRASP_DIM))}
    datas = [mujoco.MjData(model) for _ in range(nthread)]
    work = _workspace()
    with thread_pool(nthread) as pool:
        for start in range(0, n, chunk):
            index = slice(start, min(start + chunk, n))
            _chunk(template, scene, pool, datas, work, qpos[index], ctrl[index], out, index)
    if work.nbytes > _KEEP_BYTES:
        _LOCAL.work = None
    return HoldResult(success=np.all(out["held"], axis=-1), **out)
