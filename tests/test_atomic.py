"""huabu.core.atomic, which every writer of outputs uses: the target only ever holds a whole file, a failure leaves the
old one and no temporary file, and new files get the umask's permissions."""

from __future__ import annotations

import os

import pytest

from huabu.core.atomic import atomic_dir, atomic_file, atomic_path


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "deep" / "er" / "out.npy"
    with atomic_path(target, suffix=".npy") as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.npy.") and tmp.suffix == ".npy"
        assert not target.exists()  # the folder is made, the target only appears at the end
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"first" and os.listdir(target.parent) == ["out.npy"]


def test_atomic_file_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "a.png") as f:
            f.write(b"png")
    finally:
        os.umask(old)
    assert (tmp_path / "a.png").read_bytes() == b"png"
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["a.png"]


def test_atomic_dir_swaps_a_whole_folder_or_keeps_the_old_one(tmp_path):
    target = tmp_path / "model"
    (tmp_path / ".model.partial").mkdir()  # what a killed attempt left
    (tmp_path / ".model.partial" / "junk").write_bytes(b"half")
    with atomic_dir(target) as tmp:
        assert list(tmp.iterdir()) == [] and not target.exists()
        (tmp / "weights").write_bytes(b"first")
    assert os.listdir(tmp_path) == ["model"] and (target / "weights").read_bytes() == b"first"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_bytes(b"second")
    assert os.listdir(target) == ["weights"] and (target / "weights").read_bytes() == b"second"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == ["model"] and (target / "weights").read_bytes() == b"second"


def test_a_killed_writer_leaves_nothing_the_next_start_does_not_sweep(tmp_path):
    import subprocess
    import sys

    from huabu.core.atomic import sweep_temporaries

    # A writer killed (SIGKILL) in the middle of an atomic write: its temporary file stays behind.
    code = (
        "import os, sys, signal\nfrom huabu.core.atomic import atomic_file\n"
        "with atomic_file(sys.argv[1]) as f:\n    f.write(b'half'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    target = tmp_path / "sub" / "00000-1.png"
    subprocess.run([sys.executable, "-c", code, str(target)], check=False)
    left = os.listdir(target.parent)
    assert len(left) == 1 and left[0].startswith(".00000-1.png.") and not target.exists()
    with atomic_path(tmp_path / "live.png") as mine:  # this process is still writing: never swept
        mine.write_bytes(b"mine")
        (tmp_path / "keep.png").write_bytes(b"png")
        assert sweep_temporaries(tmp_path) == 1
        assert mine.exists() and os.listdir(target.parent) == []
    assert sorted(os.listdir(tmp_path)) == ["keep.png", "live.png", "sub"]
