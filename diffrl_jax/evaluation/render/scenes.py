"""Stills of grasps and videos of lift executions, replayed on MuJoCo C.

Pure core: `render_grasp` and `lift_frames` take a scene or a lift template
and arrays and return images `[H, W, 3]` / frames `[F, H, W, 3]` (uint8 RGB).
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.evaluation.render.camera import (
    Camera,
    framing_camera,
    geom_bounds,
    side_azimuth,
)
from diffrl_jax.evaluation.render.gl import opened_renderer
from diffrl_jax.hand import constants
from diffrl_jax.sim.mujoco_backend import STATE  # the state lift_mujoco's rollouts record

__all__ = ["frame_steps", "grasp_image", "grasp_qpos", "lift_frames", "lift_states", "render_grasp"]



def _model_and_scene(scene_or_model):
    model = getattr(scene_or_model, "model", scene_or_model)
    if not isinstance(model, mujoco.MjModel):
        raise TypeError(f"expected a Scene or an MjModel, got {type(scene_or_model).__name__}")
    return model, (scene_or_model if model is not scene_or_model else None)


def grasp_qpos(scene, world_grasp, object_pose) -> np.ndarray:
    """qpos [nq] of `scene` (a hand-object Scene) with the hand at world_grasp [31], the object at object_pose [7]."""
    world_grasp = np.asarray(world_grasp, np.float64)
    object_pose = np.asarray(object_pose, np.float64)
    if world_grasp.shape != (grasp_lib.GRASP_DIM,) or object_pose.shape != (7,):
        raise ValueError(f"expected a grasp [31] and a pose [7], got {world_grasp.shape} and {object_pose.shape}")
    qpos = scene.model.qpos0.copy()
    qpos[scene.hand_qpos] = np.concatenate([grasp_lib.wrist_qpos(world_grasp), world_grasp[grasp_lib.JOINTS]])
    qpos[scene.object_qpos:scene.object_qpos + 7] = object_pose
    return qpos


def render_grasp(scene_or_model, qpos, *, width: int = 640, height: int = 480,
                 camera: Camera | None = None) -> np.ndarray:
    """A still image [height, width, 3] uint8 of the model at qpos [nq].

    scene_or_model: a `Scene` (then the default camera frames the hand and the
    object, from the side of the line between them) or an `MjModel` (then it
    looks at the model's centre).
    """
    model, scene = _model_and_scene(scene_or_model)
    qpos = np.asarray(qpos, np.float64)
    if qpos.shape != (model.nq,):
        raise ValueError(f"qpos must have shape [{model.nq}], got {qpos.shape}")
    data = mujoco.MjData(model)
    data.qpos[:] = qpos
    mujoco.mj_forward(model, data)
    if camera is None:
        if scene is not None:  # the hand and the object fill the picture, seen from their side
            palm = data.xpos[model.body(constants.ROOT_BODY).id]
            lo, hi = geom_bounds(model, data, np.concatenate([scene.hand_geoms, scene.object_geoms]))
            camera = framing_camera(lo, hi, side_azimuth(data.xipos[scene.object_body], palm),
                                    fovy_deg=model.vis.global_.fovy)
        else:
            camera = Camera(tuple(model.stat.center), 2.0 * float(model.stat.extent))
    with opened_renderer(model, width, height) as renderer:
        renderer.update_scene(data, camera=camera.mjv())
        return renderer.render().copy()


def grasp_image(template, prepared, object_pose, world_grasp, *, width: int = 640,
                height: int = 480, camera: Camera | None = None) -> np.ndarray:
    """A still [H, W, 3] of a world grasp [31] on `prepared` resting at object_pose [7] on the lift table."""
    from diffrl_jax.sim import lift_mujoco

    scene = lift_mujoco.object_scene(template, prepared)
    return render_grasp(scene, grasp_qpos(scene, world_grasp, object_pose), width=width, height=height,
                        camera=camera)


# ---------------------------------------------------------------------------
# Lift videos.


def lift_states(template, prepared, object_pose, world_grasp):
    """One lift on MuJoCo C, the one `lift_mujoco.lift_mujoco` judges: (model, states [T + 1, nstate]).

    `lift_mujoco.lift_rollout`: the same scene, start, servo targets and
    rollout (zero warmstart); row 0 is the start, row t the state after t steps.
    """
    from diffrl_jax.sim import lift_mujoco

    object_pose = np.asarray(object_pose, np.float64)
    world_grasp = np.asarray(world_grasp, np.float64)
    if object_pose.shape != (7,) or world_grasp.shape != (grasp_lib.GRASP_DIM,):
        raise ValueError(f"expected a pose [7] and a grasp [31], got {object_pose.shape} and {world_grasp.shape}")
    scene, state0, states = lift_mujoco.lift_rollout(template, prepared, object_pose[None], world_grasp[None],
                                                     nthread=1)
    return scene.model, np.concatenate([state0, states[0]])


def frame_steps(n_steps: int, timestep: float, fps: float) -> np.ndarray:
    """Indices into states [n_steps + 1] of the frames of a video at `fps`: 0, then every 1/fps s."""
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps}")
    duration = n_steps * timestep
    times = np.arange(math.floor(duration * fps + 1e-9) + 1) / fps
    return np.minimum(np.rint(times / timestep).astype(int), n_steps)


def lift_frames(template, prepared, object_pose, world_grasp, *, fps: float = 30.0, width: int = 480,
                height: int = 360, camera: Camera | None = None) -> np.ndarray:
    """Frames [F, height, width, 3] uint8 of the lift of world_grasp [31] on `prepared` at object_pose [7].

    The execution is `lift_states` (the one `lift_mujoco` judges), sampled at
    `fps` from its physics steps: F = floor(duration x fps) + 1. The default
    camera stays still, at the side of the object and the pre-grasp palm,
    far enough to keep the hand and the object in view all along.
    """
    from diffrl_jax.sim import lift_mujoco

    model, states = lift_states(template, prepared, object_pose, world_grasp)
    steps = frame_steps(len(states) - 1, template.protocol.physics.timestep, fps)
    data = mujoco.MjData(model)
    if camera is None:  # still, at the side, seeing the hand and the object in every frame
        scene = lift_mujoco.object_scene(template, prepared)
        geoms = np.concatenate([scene.hand_geoms, scene.object_geoms])
        box = []
        for step in steps:
            mujoco.mj_setState(model, data, states[step], STATE)
            mujoco.mj_kinematics(model, data)
            box += geom_bounds(model, data, geoms)
        mujoco.mj_setState(model, data, states[0], STATE)
        mujoco.mj_kinematics(model, data)
        azimuth = side_azimuth(data.xipos[scene.object_body], data.xpos[model.body(constants.ROOT_BODY).id])
        camera = framing_camera(np.nanmin(box, axis=0), np.nanmax(box, axis=0), azimuth, elevation=-20.0,
                                fovy_deg=model.vis.global_.fovy)
    frames = np.empty((len(steps), height, width, 3), np.uint8)
    mjv = camera.mjv()
    with opened_renderer(model, width, height) as renderer:
        for k, step in enumerate(steps):
            mujoco.mj_setState(model, data, states[step], STATE)
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera=mjv)
            renderer.render(out=frames[k])
    return frames
