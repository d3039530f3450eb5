"""Images and videos to files: contact sheets, PNGs and H.264 mp4s, each written atomically.

`write_png` and `write_mp4` write through a temporary file and a rename, so a
file either exists whole or not at all. Videos are H.264 mp4 (yuv420p)
encoded in-process by PyAV (`av`), whose wheels bundle FFmpeg and x264:
nothing is downloaded at run time.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np

from diffrl_jax.evaluation.render.gl import RenderError
from diffrl_jax.files import atomic_path

__all__ = ["tile", "video_codec", "write_mp4", "write_png"]


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 1:
        raise ValueError(f"frames must be uint8 [F >= 1, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


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
