"""The OpenGL backend of MuJoCo's offscreen renderer, and renderers opened with it.

Headless rendering needs EGL (a GPU driver, or Mesa's software EGL) or OSMesa
(Mesa's software rasteriser: `apt-get install libosmesa6`). `gl_backend`
respects `MUJOCO_GL` when it is set; otherwise it tries `egl`, then `osmesa`,
each in a child process, because MuJoCo and PyOpenGL fix their platform once
per process. The chosen backend's context class is handed to
`mujoco.Renderer` even when `mujoco` was imported before the choice (it reads
`MUJOCO_GL` at import and would otherwise fall back to GLFW, which needs a
display). One process can use one of EGL and OSMesa: PyOpenGL binds its
platform at first use.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import mujoco
import numpy as np

from diffrl_jax.errors import DiffrlError

__all__ = ["BACKENDS", "INSTALL_HINT", "RenderError", "gl_backend", "opened_renderer", "probe_backend"]

# Tried in this order when MUJOCO_GL is not set (macOS renders offscreen with CGL).
BACKENDS = ("cgl",) if sys.platform == "darwin" else ("egl", "osmesa")
INSTALL_HINT = ("install OSMesa (Debian/Ubuntu: apt-get install libosmesa6) and set MUJOCO_GL=osmesa, "
                "or EGL (apt-get install libegl1 with a GPU driver, or Mesa's libegl-mesa0) and set "
                "MUJOCO_GL=egl")
_DISABLED = ("disable", "disabled", "off", "false", "0")
_PROBE_TIMEOUT_S = 120.0
_SHADOW_SIZE = 1024  # px of the shadow map: MuJoCo's 4096 costs 2.5x the render time in software GL
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


def probe_backend(name: str, timeout_s: float = _PROBE_TIMEOUT_S) -> str | None:
    """None if `MUJOCO_GL=name` renders a test image in a child process, else why not (one line)."""
    env = dict(os.environ, MUJOCO_GL=name)
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
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
    return copy.copy(model)  # MjModel's copy is deep: the caller's model keeps its visual settings


@contextlib.contextmanager
def opened_renderer(model: mujoco.MjModel, width: int, height: int) -> Iterator[mujoco.Renderer]:
    """A `mujoco.Renderer` of a copy of `model` (width x height px), closed on leaving the block."""
    renderer = _renderer(model, width, height)
    try:
        yield renderer
    finally:
        renderer.close()  # explicitly: EGL contexts freed at interpreter exit raise noisily
