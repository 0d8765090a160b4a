"""Writing videos: mp4 (H.264) and webm (VP9) through the ffmpeg binary inside imageio-ffmpeg, gif through Pillow.

The container follows the file extension. Frames go to a temp file beside the target that os.replace moves into
place, so a failed or interrupted encode never leaves a partial video (nor replaces a good one). The generation
parameters, the same A1111 infotext PNGs carry, go into the container's `comment` tag (mp4, webm) or the GIF
comment extension, and `read_video_parameters` reads them back.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from huabu.core.atomic import atomic_path
from huabu.core.errors import BadImage, HuabuError, InvalidRequest, first_line

VIDEO_FORMATS = ("mp4", "gif", "webm")
# Codec and quality options per container: visually lossless H.264 that every player opens; VP9 in
# constant-quality mode (-b:v 0 makes -crf the only rate control).
_FFMPEG = {
    "mp4": ("libx264", ["-crf", "18", "-preset", "medium", "-movflags", "+faststart"]),
    "webm": ("libvpx-vp9", ["-crf", "32", "-b:v", "0"]),
}


def video_format(path: str | os.PathLike) -> str:
    """"mp4", "gif" or "webm" from the file extension (any case)."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in VIDEO_FORMATS:
        raise InvalidRequest(f"cannot write a video to {Path(path).name}: use a .mp4, .webm or .gif file name")
    return ext


def _rgb(frame) -> np.ndarray:
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise InvalidRequest(f"video frames must be RGB uint8 images (got {frame.dtype} {frame.shape})")
    return np.ascontiguousarray(frame)


def write_video(frames: Iterable, path: str | os.PathLike, fps: int, parameters: str | None = None) -> Path:
    """Write PIL images or HxWx3 uint8 arrays as a video whose format follows `path`'s extension, atomically."""
    path = Path(path)
    fmt = video_format(path)
    if fps < 1:
        raise InvalidRequest(f"fps must be at least 1, got {fps}")
    with atomic_path(path, suffix=f".tmp{path.suffix}") as tmp:  # the writers go by the extension
        if fmt == "gif":
            _write_gif([_rgb(f) for f in frames], tmp, fps, parameters)
        else:
            _write_ffmpeg(frames, tmp, fps, fmt, parameters)
    return path


def _write_gif(frames: list[np.ndarray], path: Path, fps: int, parameters: str | None) -> None:
    if not frames:
        raise InvalidRequest("a video needs at least one frame")
    _same_size(frames)
    images = [Image.fromarray(f) for f in frames]
    extra = {"comment": parameters.encode("utf-8")} if parameters else {}
    # GIF delays are in hundredths of a second: 8 fps -> 120 ms (Pillow rounds to 10 ms).
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   optimize=False, **extra)


def _same_size(frames: list[np.ndarray]) -> None:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise InvalidRequest(f"video frames differ in size: {sorted(shapes)}")


def _write_ffmpeg(frames: Iterable, path: Path, fps: int, fmt: str, parameters: str | None) -> None:
    import imageio_ffmpeg

    codec, options = _FFMPEG[fmt]
    metadata = ["-metadata", f"comment={parameters}"] if parameters else []
    writer, size = None, None
    try:
        for frame in frames:
            frame = _rgb(frame)
            if writer is None:
                size = frame.shape
                # macro_block_size=2: yuv420p needs even sides; huabu sizes are multiples of the VAE factor anyway.
                writer = imageio_ffmpeg.write_frames(str(path), (frame.shape[1], frame.shape[0]), fps=fps, codec=codec,
                                                     quality=None, macro_block_size=2, ffmpeg_log_level="error",
                                                     output_params=[*options, *metadata])
                _ffmpeg(path, writer.send, None)
            elif frame.shape != size:
                raise InvalidRequest(f"video frames differ in size: {size} then {frame.shape}")
            _ffmpeg(path, writer.send, frame.tobytes())
        if writer is None:
            raise InvalidRequest("a video needs at least one frame")
        _ffmpeg(path, writer.close)
    finally:
        if writer is not None:
            writer.close()


def _ffmpeg(path: Path, call, *args) -> None:
    """One exchange with the ffmpeg process; its failures (a broken pipe, an error exit) become one line."""
    try:
        call(*args)
    except (OSError, RuntimeError) as err:
        raise HuabuError(f"ffmpeg could not write {path.suffix} video: {first_line(err)}") from None


def read_video_parameters(path: str | os.PathLike) -> str | None:
    """The infotext stored in a video written by `write_video` (None when it has none)."""
    path = Path(path)
    if not path.is_file():
        raise BadImage(f"video file not found: {path}")
    if video_format(path) == "gif":
        try:
            with Image.open(path) as image:
                comment = image.info.get("comment")
        except OSError:
            raise BadImage(f"cannot read {path}: not a GIF Pillow can open") from None
        return comment.decode("utf-8", errors="replace") if isinstance(comment, bytes) else comment
    import imageio_ffmpeg

    done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                          capture_output=True, timeout=60)
    if done.returncode != 0:
        raise BadImage(f"cannot read {path}: {done.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    tags = parse_ffmetadata(done.stdout.decode("utf-8", errors="replace"))
    return tags.get("comment")


def parse_ffmetadata(text: str) -> dict[str, str]:
    """Global tags of ffmpeg's FFMETADATA text (keys lower-cased). Hand-written: no library reads this format.
    A backslash escapes the next character (`=`, `;`, `#`, `\\` or a newline); sections ([STREAM]...) end it."""
    tags: dict[str, str] = {}
    entry: list[str] = []
    chars = iter(text if text.endswith("\n") else text + "\n")
    for char in chars:
        if char == "\\":
            entry.append(next(chars, ""))
            continue
        if char != "\n":
            entry.append(char)
            continue
        line, entry = "".join(entry), []
        if line.startswith("["):
            break
        if line and not line.startswith((";", "#")) and "=" in line:
            key, _, value = line.partition("=")
            tags[key.lower()] = value
    return tags
