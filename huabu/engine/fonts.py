"""Fonts on this machine: the CJK ones that glyph maps and grid labels need (both draw Chinese text)."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from huabu.core.errors import HuabuError

# Where Debian's fonts-noto-cjk and other common CJK fonts live, for machines without fontconfig.
CJK_FONT_PATHS = (
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/System/Library/Fonts/PingFang.ttc"),
    Path("C:/Windows/Fonts/msyh.ttc"),
)


@cache
def find_cjk_font() -> Path:
    """A font with Chinese glyphs: Noto Sans CJK Regular when present, else the first `fc-list :lang=zh` names."""
    for path in CJK_FONT_PATHS[:2]:
        if path.is_file():
            return path
    try:
        listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    files = sorted(line.split(":")[0].strip() for line in listed.splitlines() if line.strip())
    for path in [*(Path(f) for f in files if "Regular" in f or "Sans" in f), *map(Path, files), *CJK_FONT_PATHS]:
        if path.is_file():
            return path
    raise HuabuError("no font with Chinese glyphs found: install Debian's fonts-noto-cjk (scripts/install.sh "
                     "--dev does) or pass --font FILE")
