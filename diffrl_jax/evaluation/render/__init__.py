"""Offscreen pictures of grasps and videos of lift executions (MuJoCo C, `mujoco.Renderer`).

Pure core: `render_grasp` and `lift_frames` take a scene or a lift template and
arrays and return images `[H, W, 3]` / frames `[F, H, W, 3]` (uint8 RGB);
`write_png` and `write_mp4` put them into files atomically. Headless rendering
needs EGL or OSMesa; `gl_backend` picks one, or raises `RenderError` saying
what to install.

- `gl`: the OpenGL backend (probing, choosing) and renderers opened with it.
- `camera`: free cameras framing a grasp (`side_camera`, `framing_camera`).
- `media`: contact sheets, PNGs and H.264 mp4s.
- `scenes`: grasp stills and lift videos replayed on MuJoCo C.

Every public name is re-exported here: `from diffrl_jax.evaluation import render;
render.lift_frames(...)`. Code in this package calls its home modules, so a
test that replaces a function for the package's own callers (e.g.
`probe_backend` under `gl_backend`) patches the home module (`render.gl`).
"""

from diffrl_jax.evaluation.render.camera import (
    Camera,
    framing_camera,
    geom_bounds,
    side_azimuth,
    side_camera,
)
from diffrl_jax.evaluation.render.gl import (
    BACKENDS,
    INSTALL_HINT,
    RenderError,
    gl_backend,
    opened_renderer,
    probe_backend,
)
from diffrl_jax.evaluation.render.media import tile, video_codec, write_mp4, write_png
from diffrl_jax.evaluation.render.scenes import (
    frame_steps,
    grasp_image,
    grasp_qpos,
    lift_frames,
    lift_states,
    render_grasp,
)

__all__ = [
    "BACKENDS",
    "INSTALL_HINT",
    "Camera",
    "RenderError",
    "frame_steps",
    "framing_camera",
    "geom_bounds",
    "gl_backend",
    "grasp_image",
    "grasp_qpos",
    "lift_frames",
    "lift_states",
    "opened_renderer",
    "probe_backend",
    "render_grasp",
    "side_azimuth",
    "side_camera",
    "tile",
    "video_codec",
    "write_mp4",
    "write_png",
]
