"""Grasp proposals for objects without a dataset, closed in simulation.

Host-side, MuJoCo's C engine only (no JAX). A candidate is an open hand whose
palm faces the object from a random direction at a random clearance (the
palm-pose sampling of `data.example`); its fingers then close *in simulation*:
the wrist servo holds the palm, the finger servo targets ramp from the open
pose to a closed one, and each finger stops where the object pushes back (its
servo saturates at the hand's torque limit). The finger joints at the end are
the grasp's joints. Many candidates run at once with `mujoco.rollout` on
threads; a candidate is kept when the thumb and at least two other fingers
touch the object and the hand barely penetrates it.

Proposals are seeds for the hold test, not validated grasps.
"""

from __future__ import annotations

import copy
import dataclasses

import mujoco
import numpy as np

from diffrl_jax import configs
from diffrl_jax.configs import integer, non_negative, positive
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants
from diffrl_jax.hand.poses import CLOSED_POSE, OPEN_POSE, PALM_CENTRE, finger_geoms
from diffrl_jax.runtime import usable_cpus
from diffrl_jax.scene import Scene
from diffrl_jax.sim import mujoco_backend
from diffrl_jax.sim.geometry import min_distance
from diffrl_jax.sim.mujoco_backend import STATE

_LOW, _HIGH = constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1]

# The object's mass (kg) while fingers close; its inertia scales along.
_FROZEN_MASS = 1e5


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
    """How candidates are sampled, closed and kept; `propose_grasps` takes overrides."""

    # m, palm-object gap of the open hand. A palm near the object gives
    # enveloping grasps: with 0-1 cm, about three times as many proposals on the
    # built-in objects survived a 1 s gravity drop as with 0-3 cm.
    clearance: tuple[float, float] = (0.0, 0.01)
    aim_jitter: float = non_negative(0.5)  # aim point offset, as a fraction of the object's half extents
    close_s: float = positive(0.4, finite=True)  # s, finger targets ramp from open to closed
    settle_s: float = non_negative(0.1)  # s, targets then held closed
    # Multiplies the finger torque limits while closing. MuJoCo's contacts are
    # soft, so fingers sink in proportion to how hard they press: at full
    # strength 2-3 mm, at 0.3 about 1 mm at most.
    closing_strength: float = positive(0.3, finite=True)
    contact_distance: float = positive(1e-3, finite=True)  # m, a finger closer than this touches
    max_penetration: float = positive(2e-3, finite=True)  # m, deepest hand-object overlap kept
    batch_size: int = integer(64, min=1)  # candidates per rollout call (does not change the result)
    # Candidates sampled before giving up; default 200 n.
    max_candidates: int | None = integer(None, min=1, optional=True)

    def validate(self) -> ProposalConfig:
        configs.check(self, "proposal")
        low, high = self.clearance
        if not 0.0 <= low <= high:
            raise ConfigError(f"clearance must satisfy 0 <= low <= high, got {self.clearance}")
        return self


def closing_model(scene: Scene, strength: float = 1.0) -> mujoco.MjModel:
    """A copy of the scene's model in which the object stays put and gravity is off.

    `strength` multiplies the finger torque limits.

    The object keeps its free joint, so states have the scene's layout, but
    gets a huge mass and inertia: the fingers' few newtons move it by
    micrometres at most over a closing. This suits `rollout`, which runs open loop and
    so cannot restore the object's pose every step, and it costs nothing per
    step, unlike re-compiling the scene with the object welded to the world.
    """
    model = copy.deepcopy(scene.model)
    factor = _FROZEN_MASS / model.body_mass[scene.object_body]
    model.body_mass[scene.object_body] *= factor
    model.body_inertia[scene.object_body] *= factor
    model.actuator_forcerange[6:] *= strength  # ctrl: wrist 6, fingers 22
    model.opt.gravity[:] = 0.0
    # Constraint softness uses the inverse weights computed at compile time;
    # stale ones (of the light object) make contacts unstable within steps.
    mujoco.mj_setConst(model, mujoco.MjData(model))
    return model


def _object_box(scene: Scene, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
    """Centre [3] and half extents [3] of the object's axis-aligned bounding box."""
    model = scene.model
    lows, highs = [], []
    for g in scene.object_geoms:
        rot = data.geom_xmat[g].reshape(3, 3)
        centre = data.geom_xpos[g] + rot @ model.geom_aabb[g, :3]
        half = np.abs(rot) @ model.geom_aabb[g, 3:]
        lows.append(centre - half)
        highs.append(centre + half)
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    return 0.5 * (low + high), 0.5 * (high - low)


class _Geometry:
    """Places the hand kinematically and measures it against the object."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.model = scene.model
        self.data = mujoco.MjData(scene.model)
        mujoco.mj_kinematics(self.model, self.data)
        self.fromto = np.zeros(6)
        names = [self.model.geom(g).name for g in scene.hand_geoms]
        self.palm = [g for g, name in zip(scene.hand_geoms, names)
                     if name.startswith("robot0:C_palm")]
        # The little finger's metacarpal is part of the palm: its touch is no finger's.
        self.fingers = {finger: [g for g in geoms if "metacarpal" not in self.model.geom(g).name]
                        for finger, geoms in finger_geoms(scene).items()}

    def place(self, hand_qpos: np.ndarray) -> None:
        self.data.qpos[self.scene.hand_qpos] = hand_qpos
        mujoco.mj_kinematics(self.model, self.data)

    def distance(self, geoms, distmax: float, others=None) -> float:
        others = self.scene.object_geoms if others is None else others
        return min_distance(self.model, self.data, geoms, others, distmax, self.fromto)


def _sample_palm(geo: _Geometry, rng: np.random.Generator, centre, half,
                 config: ProposalConfig) -> np.ndarray | None:
    """Wrist qpos [6] of an open hand facing the object, or None if it misses.

    As in `example.kinematic_grasps`: the palm's back points along a random
    direction d, and the hand slides in along -d towards an aim point near the
    object's centre until the palm is a sampled clearance away.
    """
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    z = np.cross(d, rng.normal(size=3))
    z /= np.linalg.norm(z)
    rot = np.stack([np.cross(d, z), d, z], axis=-1)  # palm's +y (its back) along d
    offset = config.aim_jitter * half * rng.uniform(-1.0, 1.0, size=3)
    aim = centre + offset - d * (offset @ d)
    clearance = rng.uniform(*config.clearance)
    angles = grasp_lib.wrist_qpos(grasp_lib.make_grasps(np.zeros(3), rot, OPEN_POSE))[3:]
    qpos = np.concatenate([np.zeros(3), angles, OPEN_POSE])
    distmax = config.clearance[1] + 0.01

    def gap(h):  # palm-object distance with the palm's inner face h from the aim point
        qpos[:3] = aim + d * h - rot @ PALM_CENTRE
        geo.place(qpos)
        return geo.distance(geo.palm, distmax)

    if gap(0.0) > clearance:
        return None  # the palm would pass beside the object
    low, high = 0.0, 2.0 * float(np.linalg.norm(half)) + distmax
    for _ in range(14):  # to ~10 um; the clearance is random anyway
        mid = 0.5 * (low + high)
        low, high = (mid, high) if gap(mid) < clearance else (low, mid)
    gap(high)
    if geo.distance(geo.scene.hand_geoms, distmax) < 0.0:
        return None  # an open finger is already inside the object
    table = geo.scene.table_geom
    if table >= 0 and geo.distance(geo.scene.hand_geoms, distmax, [table]) < 0.0:
        return None
    return qpos[:6].copy()


def _finger_controls(config: ProposalConfig, timestep: float) -> np.ndarray:
    """Finger servo targets [T, 22]: a linear ramp from open to closed, then held."""
    close_steps = max(1, int(round(config.close_s / timestep)))
    steps = close_steps + int(round(config.settle_s / timestep))
    ramp = np.minimum(np.arange(1, steps + 1) / close_steps, 1.0)[:, None]
    return OPEN_POSE + ramp * (CLOSED_POSE - OPEN_POSE)


def _close(model, datas, pool, scene: Scene, wrists: np.ndarray,
           fingers: np.ndarray) -> np.ndarray:
    """Simulates the closing of B candidates: wrists [B, 6] -> final hand qpos [B, 28]."""
    b, steps = len(wrists), len(fingers)
    data = datas[0]
    mujoco.mj_resetData(model, data)
    state0 = np.empty((b, mujoco.mj_stateSize(model, STATE)))
    for i, wrist in enumerate(wrists):
        data.qpos[scene.hand_qpos] = np.concatenate([wrist, OPEN_POSE])
        mujoco.mj_getState(model, data, state0[i], STATE)
    control = np.empty((b, steps, model.nu))
    control[:, :, :6] = wrists[:, None]
    control[:, :, 6:] = fingers
    # Zero warmstarts: each world is then independent of which thread ran what
    # before it, so proposals are deterministic.
    state, _ = pool.rollout(model, datas, state0, control,
                            initial_warmstart=np.zeros((b, model.nv)))
    qpos = state[:, -1, 1:1 + model.nq]  # FULLPHYSICS state: time, qpos, qvel, act
    return qpos[:, scene.hand_qpos]


def _keep(geo: _Geometry, hand_qpos: np.ndarray, config: ProposalConfig) -> bool:
    """Thumb and two more fingers touch; the hand overlaps the object at most slightly."""
    geo.place(hand_qpos)
    touching = {
        finger: geo.distance(geoms, 2 * config.contact_distance) < config.contact_distance
        for finger, geoms in geo.fingers.items()
    }
    if not touching["th"] or sum(touching.values()) < 3:
        return False
    return -geo.distance(geo.scene.hand_geoms, config.max_penetration) <= config.max_penetration


def propose_grasps(scene: Scene, n: int, seed: int = 0, *,
                   config: ProposalConfig = ProposalConfig(), nthread: int | None = None,
                   **overrides) -> np.ndarray:
    """`n` object-frame grasps [n, 31] (float64) made by closing the hand in simulation.

    `overrides` replace fields of `config` (e.g. `max_candidates=500`).
    `nthread` rollout threads (default: the CPUs this process may use).
    Deterministic for a fixed seed and config, whatever `nthread` and
    `batch_size`: candidates are drawn in one sequence and simulated
    independently, and the first `n` that pass are returned.
    Raises `ConfigError` for `n < 1`, a bad config, or too few passing
    candidates.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"number of grasps must be a positive integer, got {n!r}")
    config = configs.replace(config, overrides, "proposal config override").validate()
    max_candidates = config.max_candidates or 200 * n
    nthread = nthread or usable_cpus()
    rng = np.random.default_rng(seed)
    geo = _Geometry(scene)
    centre, half = _object_box(scene, geo.data)
    model = closing_model(scene, config.closing_strength)
    datas = [mujoco.MjData(model) for _ in range(nthread)]
    fingers = _finger_controls(config, model.opt.timestep)
    found: list[np.ndarray] = []
    tried = 0
    # Host loop over batches: sampling and checks are Python, the closing is C.
    with mujoco_backend.thread_pool(nthread) as pool:
        while len(found) < n and tried < max_candidates:
            batch = min(config.batch_size, max_candidates - tried)
            tried += batch
            wrists = [_sample_palm(geo, rng, centre, half, config) for _ in range(batch)]
            wrists = np.array([w for w in wrists if w is not None]).reshape(-1, 6)
            if not len(wrists):
                continue
            final = _close(model, datas, pool, scene, wrists, fingers)
            final = final[np.all(np.isfinite(final), axis=1)]
            final[:, 6:] = np.clip(final[:, 6:], _LOW, _HIGH)  # limits are soft in MuJoCo
            found += [q for q in final if _keep(geo, q, config)]
    if len(found) < n:
        raise ConfigError(
            f"found only {len(found)} of {n} grasps on {scene.object_name!r} in "
            f"{tried} candidates; raise max_candidates or loosen the proposal config")
    hand = np.stack(found[:n])
    return grasp_lib.grasps_from_wrist_qpos(hand[:, :6], hand[:, 6:])
