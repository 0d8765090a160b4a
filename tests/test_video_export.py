"""Video export: each container read back by an independent reader (imageio-ffmpeg's decoder, Pillow), the
parameters stored in the file, and atomic writes."""

from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from huabu.core.errors import InvalidRequest
from huabu.engine.video_export import parse_ffmetadata, read_video_parameters, write_video

INFOTEXT = ('a cat, (orange fur:1.2), 画布\nNegative prompt: blurry; #x = y \\ z\n'
            'Steps: 3, Sampler: DPM++ 2M, Seed: 7, Frames: 5, FPS: 8, Version: huabu 0.1.0')


def _frames(n: int = 5, size: tuple[int, int] = (32, 48)) -> list[np.ndarray]:
    """A bright square moving right on grey: distinct, smooth frames."""
    frames = []
    for k in range(n):
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        frame[10:22, 4 + 4 * k:16 + 4 * k] = (250, 40, 40)
        frames.append(frame)
    return frames


@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_ffmpeg_containers_read_back(tmp_path, ext):
    frames = _frames()
    path = write_video(frames, tmp_path / f"clip.{ext}", fps=8, parameters=INFOTEXT)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    decoded = [np.frombuffer(raw, np.uint8).reshape(48, 32, 3) for raw in reader]
    assert meta["size"] == (32, 48) and meta["fps"] == 8 and len(decoded) == 5
    # Lossy codecs: close to the input, and the square has moved between first and last frame.
    assert np.abs(decoded[2].astype(int) - frames[2]).mean() < 8
    assert decoded[0][16, 8, 0] > 200 and decoded[-1][16, 8, 0] < 150
    assert read_video_parameters(path) == INFOTEXT
    assert [p.name for p in tmp_path.iterdir()] == [f"clip.{ext}"]  # no temp file left


def test_gif_reads_back_with_pillow(tmp_path):
    frames = [Image.fromarray(f) for f in _frames()]
    path = write_video(frames, tmp_path / "clip.GIF", fps=8, parameters=INFOTEXT)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (32, 48) and gif.info["duration"] == 120
        gif.seek(4)
        assert np.asarray(gif.convert("RGB"))[16, 24, 0] > 200
    assert read_video_parameters(path) == INFOTEXT


def test_failed_encode_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"the previous video")

    def broken():
        yield from _frames(2)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(broken(), target, fps=8)
    assert target.read_bytes() == b"the previous video"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_bad_video_requests(tmp_path):
    with pytest.raises(InvalidRequest, match="use a .mp4, .webm or .gif"):
        write_video(_frames(), tmp_path / "clip.avi", fps=8)
    with pytest.raises(InvalidRequest, match="differ in size"):
        write_video([_frames()[0], _frames(size=(16, 16))[0]], tmp_path / "clip.gif", fps=8)
    with pytest.raises(InvalidRequest, match="at least one frame"):
        write_video([], tmp_path / "clip.mp4", fps=8)
    assert list(tmp_path.iterdir()) == []


def test_parse_ffmetadata_unescapes():
    text = ";FFMETADATA1\nCOMMENT=a\\=b\\;c\\#d\\\\e\\\nsecond line\nencoder=Lavf\n[STREAM]\ncomment=not global\n"
    assert parse_ffmetadata(text) == {"comment": "a=b;c#d\\e\nsecond line", "encoder": "Lavf"}
