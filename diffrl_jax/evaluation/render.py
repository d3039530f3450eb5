"""Offscreen pictures of grasps and videos of lift executions (MuJoCo C, `mujoco.Renderer`).

Pure core: `render_grasp` and `lift_frames` take a scene or a lift template and
arrays and return images `[H, W, 3]` / frames `[F, H, W, 3]` (uint8 RGB);
`write_png` and `write_mp4` put them into files through a temporary file and a
rename, so a file either exists whole or not at all.

OpenGL. Headless rendering needs EGL (a GPU driver, or Mesa's software EGL)
or OSMesa (Mesa's software rasteriser: `apt-get install libosmesa6`).
`gl_backend` respects `MUJOCO_GL` when it is set; otherwise it tries `egl`,
then `osmesa`, each in a child process, because MuJoCo and PyOpenGL fix their
platform once per process. The chosen backend's context class is handed to
`mujoco.Renderer` even when `mujoco` was imported before the choice (it reads
`MUJOCO_GL` at import and would otherwise fall back to GLFW, which needs a
display). One process can use one of EGL and OSMesa: PyOpenGL binds its
platform at first use.

Videos are H.264 mp4 (yuv420p) encoded in-process by PyAV (`av`), whose
wheels bundle FFmpeg and x264: nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import itertools
import math
import os
import subprocess
import sys
import threading
from fractions import Fraction

import mujoco
import numpy as np

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.errors import DiffrlError
from diffrl_jax.files import atomic_path
from diffrl_jax.hand import constants

# Tried in this order when MUJOCO_GL is not set (macOS renders offscreen with CGL).
BACKENDS = ("cgl",) if sys.platform == "darwin" else ("egl", "osmesa")
INSTALL_HINT = ("install OSMesa (Debian/Ubuntu: apt-get install libosmesa6) and set MUJOCO_GL=osmesa, "
                "or EGL (apt-get install libegl1 with a GPU driver, or Mesa's libegl-mesa0) and set "
                "MUJOCO_GL=egl")
_DISABLED = ("disable", "disabled", "off", "false", "0")
_PROBE_TIMEOUT_S = 120.0
_SHADOW_SIZE = 1024  # px of the shadow map: MuJoCo's 4096 costs 2.5x the render time in software GL
_STATE = mujoco.mjtState.mjSTATE_FULLPHYSICS.value  # as lift_mujoco's rollouts
_PROBE = """
import mujoco
m = mujoco.MjModel.from_xml_string(
    '<mujoco><worldbody><light pos="0 0 1"/><geom size=".1" rgba="1 0 0 1"/></worldbody></mujoco>')
d = mujoco.MjData(m)
mujoco.mj_forward(m, d)
r = mujoco.Renderer(m, 16, 16)
r.update_scene(d)
image = r.render()
r.close()
assert image.shape == (16, 16, 3) and image.any(), "the test image came back blank"
print("ok")
"""


class RenderError(DiffrlError):
    """No OpenGL backend can render here, or a picture or video cannot be written."""


# ---------------------------------------------------------------------------
# The OpenGL backend.


def probe_backend(name: str, timeout_s: float = _PROBE_TIMEOUT_S) -> str | None:
    """None if `MUJOCO_GL=name` renders a test image in a child process, else why not (one line)."""
    env = dict(os.environ, MUJOCO_GL=name)
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"a test render did not finish in {timeout_s:.0f} s"
    except OSError as e:
        return f"could not start {sys.executable}: {e}"
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    # The exception's own line, not the noise of contexts freed at exit.
    errors = [line for line in lines if not line.startswith(("File ", "Traceback", "^", "Exception ignored"))]
    reason = errors[-1] if errors else f"exit status {proc.returncode}"
    return reason[:300]


@functools.lru_cache(maxsize=8)
def _choose(requested: str) -> str:
    if requested in _DISABLED:
        raise RenderError(f"MUJOCO_GL={requested} turns MuJoCo's rendering off; unset it or {INSTALL_HINT}")
    candidates = (requested,) if requested else BACKENDS
    reasons = {}
    for name in candidates:
        reason = probe_backend(name)
        if reason is None:
            return name
        reasons[name] = reason
    tried = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
    if requested:
        raise RenderError(f"MUJOCO_GL={requested} cannot render ({tried}); {INSTALL_HINT}")
    raise RenderError(f"no headless OpenGL backend for MuJoCo's renderer ({tried}); {INSTALL_HINT}")


def gl_backend() -> str:
    """The OpenGL backend this process renders with: `MUJOCO_GL` if set, else egl or osmesa.

    Checked once per process (and per value of MUJOCO_GL) by a test render in
    a child process. Raises `RenderError`, saying what to install, when none works.
    """
    return _choose(os.environ.get("MUJOCO_GL", "").strip().lower())


def _context_class(backend: str):
    """The GLContext class of `backend`, as MuJoCo's own `gl_context` would pick it for MUJOCO_GL."""
    if backend in ("egl", "osmesa"):
        module = f"mujoco.{backend}"
    elif sys.platform == "darwin" and backend == "cgl":
        module = "mujoco.cgl"
    else:  # glfw (a display), and MuJoCo's "enable"/"on"/...
        module = "mujoco.glfw"
    try:
        return importlib.import_module(module).GLContext
    except Exception as e:  # ImportError, or the backend's own errors raised at import
        raise RenderError(f"MuJoCo's {backend} OpenGL context cannot load in this process "
                          f"({type(e).__name__}: {e}); {INSTALL_HINT}") from None


_CONTEXT_LOCK = threading.Lock()


def _renderer(model: mujoco.MjModel, width: int, height: int) -> mujoco.Renderer:
    """A `mujoco.Renderer` of a copy of `model` with an offscreen buffer of (width, height)."""
    if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer))
            and width >= 1 and height >= 1):
        raise ValueError(f"width and height must be positive integers, got {width!r} x {height!r}")
    cls = _context_class(gl_backend())
    model = _copy_model(model)
    model.vis.global_.offwidth = max(int(width), model.vis.global_.offwidth)
    model.vis.global_.offheight = max(int(height), model.vis.global_.offheight)
    model.vis.quality.shadowsize = min(model.vis.quality.shadowsize, _SHADOW_SIZE)
    from mujoco.rendering.classic import gl_context

    with _CONTEXT_LOCK:  # the context class is read from MuJoCo's module inside Renderer()
        saved = getattr(gl_context, "GLContext", None)
        gl_context.GLContext = cls
        try:
            return mujoco.Renderer(model, int(height), int(width))
        except Exception as e:
            raise RenderError(f"MuJoCo's renderer could not start with OpenGL backend {gl_backend()!r} "
                              f"({type(e).__name__}: {e}); {INSTALL_HINT}") from None
        finally:
            gl_context.GLContext = saved


def _copy_model(model: mujoco.MjModel) -> mujoco.MjModel:
    import copy

    return copy.copy(model)  # MjModel's copy is deep: the caller's model keeps its visual settings


@contextlib.contextmanager
def _opened(model, width, height):
    renderer = _renderer(model, width, height)
    try:
        yield renderer
    finally:
        renderer.close()  # explicitly: EGL contexts freed at interpreter exit raise noisily


# ---------------------------------------------------------------------------
# Cameras and stills.


@dataclasses.dataclass(frozen=True)
class Camera:
    """A free camera: it looks at `lookat` from `distance` m, turned `azimuth` and `elevation` degrees."""

    lookat: tuple[float, float, float]
    distance: float
    azimuth: float = 90.0
    elevation: float = -25.0

    def mjv(self) -> mujoco.MjvCamera:
        camera = mujoco.MjvCamera()
        camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        camera.lookat[:] = self.lookat
        camera.distance = self.distance
        camera.azimuth = self.azimuth
        camera.elevation = self.elevation
        return camera


def side_camera(target, hand, distance: float, elevation: float = -25.0, lift: float = 0.0) -> Camera:
    """A camera at the side of the object-hand line: both in view, neither hiding the other.

    target, hand: world points [3]; it looks at their midpoint raised `lift` m
    from `distance` m.
    """
    target, hand = np.asarray(target, float), np.asarray(hand, float)
    lookat = 0.5 * (target + hand) + np.array([0.0, 0.0, lift])
    return Camera(tuple(float(x) for x in lookat), float(distance), _side_azimuth(target, hand),
                  float(elevation))


def _side_azimuth(target, hand) -> float:
    away = np.asarray(hand, float) - np.asarray(target, float)
    return math.degrees(math.atan2(away[1], away[0])) + 90.0 if np.linalg.norm(away[:2]) > 1e-6 else 90.0


def geom_bounds(model: mujoco.MjModel, data: mujoco.MjData, geoms) -> tuple[np.ndarray, np.ndarray]:
    """World box (lo [3], hi [3]) around the bounding spheres of `geoms` (budget padding, > 1 m, left out)."""
    geoms = np.asarray(geoms, int)
    radius = model.geom_rbound[geoms]
    geoms, radius = geoms[radius < 1.0], radius[radius < 1.0]
    centre = data.geom_xpos[geoms]
    return (centre - radius[:, None]).min(axis=0), (centre + radius[:, None]).max(axis=0)


def framing_camera(lo, hi, azimuth: float, elevation: float = -25.0, fovy_deg: float = 45.0) -> Camera:
    """A camera looking at the centre of the box (lo, hi) from far enough to see all of it.

    The box's bounding sphere fits the vertical field of view `fovy_deg`
    (the model's `vis.global_.fovy`, 45 by default); pictures wider than tall
    then fit it too.
    """
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    radius = 0.5 * float(np.linalg.norm(hi - lo))
    distance = max(0.3, 1.1 * radius / math.sin(math.radians(fovy_deg) / 2))
    return Camera(tuple(float(x) for x in 0.5 * (lo + hi)), distance, float(azimuth), float(elevation))


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
            camera = framing_camera(lo, hi, _side_azimuth(data.xipos[scene.object_body], palm),
                                    fovy_deg=model.vis.global_.fovy)
        else:
            camera = Camera(tuple(model.stat.center), 2.0 * float(model.stat.extent))
    with _opened(model, width, height) as renderer:
        renderer.update_scene(data, camera=camera.mjv())
        return renderer.render().copy()


def grasp_image(template, prepared, object_pose, world_grasp, *, width: int = 640,
                height: int = 480, camera: Camera | None = None) -> np.ndarray:
    """A still [H, W, 3] of a world grasp [31] on `prepared` resting at object_pose [7] on the lift table."""
    from diffrl_jax.sim import lift_mujoco

    scene = lift_mujoco.object_scene(template, prepared)
    return render_grasp(scene, grasp_qpos(scene, world_grasp, object_pose), width=width, height=height,
                        camera=camera)


def tile(images, columns: int, gap: int = 4) -> np.ndarray:
    """Images [N, H, W, 3] uint8 -> one image of `columns` per row, `gap` px of white between."""
    images = _check_frames(images)
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    n, h, w, _ = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    sheet = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        sheet[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return sheet


# ---------------------------------------------------------------------------
# Lift videos.


def lift_states(template, prepared, object_pose, world_grasp):
    """One lift on MuJoCo C, as `lift_mujoco.lift_mujoco` runs it: (model, states [T + 1, nstate]).

    Same scene (`object_scene`), start and servo targets (`lift_mujoco.initial_state`,
    i.e. `lift.initial_state`) and the same rollout (zero warmstart); row 0
    is the start, row t the state after t steps.
    """
    from mujoco import rollout

    from diffrl_jax.sim import lift_mujoco

    object_pose = np.asarray(object_pose, np.float64)
    world_grasp = np.asarray(world_grasp, np.float64)
    if object_pose.shape != (7,) or world_grasp.shape != (grasp_lib.GRASP_DIM,):
        raise ValueError(f"expected a pose [7] and a grasp [31], got {object_pose.shape} and {world_grasp.shape}")
    scene = lift_mujoco.object_scene(template, prepared)
    model = scene.model
    qpos, ctrl = lift_mujoco.initial_state(template, prepared, object_pose[None], world_grasp[None])
    data = mujoco.MjData(model)
    mujoco.mj_resetData(model, data)
    data.qpos[:] = qpos[0]
    mujoco.mj_kinematics(model, data)
    state0 = np.zeros((1, mujoco.mj_stateSize(model, _STATE)))
    mujoco.mj_getState(model, data, state0[0], _STATE)
    states, _ = rollout.rollout(model, data, state0, ctrl, initial_warmstart=np.zeros((1, model.nv)))
    return model, np.concatenate([state0, states[0]])


def frame_steps(n_steps: int, timestep: float, fps: float) -> np.ndarray:
    """Indices into states [n_steps + 1] of the frames of a video at `fps`: 0, then every 1/fps s."""
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps}")
    duration = n_steps * timestep
    times = np.arange(int(math.floor(duration * fps + 1e-9)) + 1) / fps
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
    protocol = template.protocol
    steps = frame_steps(len(states) - 1, protocol.timestep, fps)
    data = mujoco.MjData(model)
    if camera is None:  # still, at the side, seeing the hand and the object in every frame
        scene = lift_mujoco.object_scene(template, prepared)
        geoms = np.concatenate([scene.hand_geoms, scene.object_geoms])
        box = []
        for step in steps:
            mujoco.mj_setState(model, data, states[step], _STATE)
            mujoco.mj_kinematics(model, data)
            box += geom_bounds(model, data, geoms)
        mujoco.mj_setState(model, data, states[0], _STATE)
        mujoco.mj_kinematics(model, data)
        azimuth = _side_azimuth(data.xipos[scene.object_body], data.xpos[model.body(constants.ROOT_BODY).id])
        camera = framing_camera(np.nanmin(box, axis=0), np.nanmax(box, axis=0), azimuth, elevation=-20.0,
                                fovy_deg=model.vis.global_.fovy)
    frames = np.empty((len(steps), height, width, 3), np.uint8)
    mjv = camera.mjv()
    with _opened(model, width, height) as renderer:
        for k, step in enumerate(steps):
            mujoco.mj_setState(model, data, states[step], _STATE)
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera=mjv)
            renderer.render(out=frames[k])
    return frames


# ---------------------------------------------------------------------------
# Files.


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 1:
        raise ValueError(f"frames must be uint8 [F >= 1, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def write_png(image, path) -> None:
    """An RGB image [H, W, 3] uint8 as a PNG, atomically."""
    from PIL import Image

    image = _check_frames(np.asarray(image)[None])[0]
    with atomic_path(path, ".png") as tmp:
        try:
            Image.fromarray(image, "RGB").save(tmp, format="PNG")
        except OSError as e:
            raise RenderError(f"cannot write {path}: {e}") from None


def video_codec() -> str:
    """The encoder of `write_mp4`: x264 from PyAV's bundled FFmpeg (mpeg4 if a build lacks it)."""
    try:
        import av
    except ImportError as e:
        raise RenderError(f"writing mp4 videos needs PyAV: pip install av ({e})") from None
    return next((c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available), "mpeg4")


def write_mp4(frames, path, fps: float = 30.0) -> None:
    """Frames (an array [F, H, W, 3] or an iterable of [H, W, 3], uint8, H and W even) as an H.264 mp4.

    Encoded at `fps` into a temporary file beside `path`, then renamed: an
    error part way (a bad frame, the encoder, the disk) leaves no file behind.
    """
    codec = video_codec()
    import av

    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps}")
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("a video needs at least one frame")
    first = _check_frames(np.asarray(first)[None])[0]
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even width and height, got {width} x {height}")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, ".mp4") as tmp:
        try:
            with av.open(tmp, mode="w", format="mp4") as container:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                if stream.codec_context.name == "libx264":
                    stream.options = {"crf": "20", "preset": "veryfast"}
                for frame in itertools.chain([first], frames):
                    frame = _check_frames(np.asarray(frame)[None])[0]
                    if frame.shape[:2] != (height, width):
                        raise ValueError(f"every frame must be {height} x {width}, got {frame.shape[:2]}")
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode())  # flush the encoder
        except (av.FFmpegError, OSError) as e:
            raise RenderError(f"cannot encode {path}: {e}") from None
