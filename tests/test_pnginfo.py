import io
import json
import os
import re
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from huabu.core.errors import BadImage
from huabu.core.pnginfo import create_infotext, output_names, parse_infotext, read_parameters, save_png_atomic

# A1111 1.10's regex for the parameter line (re_param_code in modules/infotext_utils.py).
A1111_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')

ENGINE_PARAMS = {
    "Steps": 20,
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": 7.5,
    "Seed": 3531893811,
    "Size": "512x768",
    "Model hash": "0123456789",
    "Model": "huabu-tiny",
    "VAE": None,
    "Denoising strength": 0.45,
    "Lora hashes": "add_detail: 7c6bad76eb54, paper_cut: 0a1b2c3d4e5f",
    "ControlNet 0": 'Module: canny, Model: control_canny [abc123], Weight: 1.0, Note: say "hi"',
    "Hires prompt": "line one\nline two",
}


def png_text_chunks(data: bytes) -> dict[str, tuple[str, str]]:
    """Independent PNG reader: {keyword: (chunk type, text)} for tEXt/zTXt/iTXt, checking every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(ctype + body) == crc
        pos += 12 + length
        if ctype == b"tEXt":
            key, text = body.split(b"\0", 1)
            chunks[key.decode("latin-1")] = ("tEXt", text.decode("latin-1"))
        elif ctype == b"zTXt":
            key, rest = body.split(b"\0", 1)
            chunks[key.decode("latin-1")] = ("zTXt", zlib.decompress(rest[1:]).decode("latin-1"))
        elif ctype == b"iTXt":
            key, rest = body.split(b"\0", 1)
            compressed, rest = rest[0], rest[2:]
            _lang, _translated, text = rest.split(b"\0", 2)
            text = zlib.decompress(text) if compressed else text
            chunks[key.decode("latin-1")] = ("iTXt", text.decode("utf-8"))
        elif ctype == b"IEND":
            break
    return chunks


def test_layout_matches_a1111():
    text = create_infotext("a red fox", "blurry", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7}, "0.1.0")
    assert text == "a red fox\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Version: huabu 0.1.0"
    # No negative line when the negative prompt is empty.
    assert create_infotext("a fox", "", {"Steps": 4}, "0.1.0") == "a fox\nSteps: 4, Version: huabu 0.1.0"


def test_a1111_regex_reads_every_key_of_our_line():
    text = create_infotext("p", "n", ENGINE_PARAMS, "0.1.0")
    line = text.split("\n")[-1]
    found = A1111_RE.findall(line)
    expected = {k: v for k, v in ENGINE_PARAMS.items() if v is not None}
    assert [k for k, _ in found] == [*expected, "Version"]
    for key, raw in found[:-1]:
        value = json.loads(raw) if raw.startswith('"') else raw
        assert value == str(expected[key]), key
    # Values with ',', ':', newline or quotes are JSON-quoted; plain ones are not.
    assert 'Lora hashes: "add_detail: 7c6bad76eb54, paper_cut: 0a1b2c3d4e5f"' in line
    assert '"line one\\nline two"' in line
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in line
    assert "VAE" not in line


def test_round_trip():
    text = create_infotext("a cat,\n  on a mat", "ugly, (blurry:1.2)\nlowres", ENGINE_PARAMS, "0.1.0")
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a cat,\n  on a mat"  # exactly, indentation included (issue 16)
    assert parsed["Negative prompt"] == "ugly, (blurry:1.2)\nlowres"
    for key, value in ENGINE_PARAMS.items():
        if value is None:
            assert key not in parsed
        else:
            assert parsed[key] == value, key
    assert parsed["Model hash"] == "0123456789"  # an all-digit hash stays text
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 768)
    assert parsed["Version"] == "huabu 0.1.0"


def test_round_trip_few_params_and_empty_prompt():
    assert parse_infotext(create_infotext("a fox", "", {}, "0.1.0")) == {
        "Prompt": "a fox",
        "Negative prompt": "",
        "Version": "huabu 0.1.0",
    }
    parsed = parse_infotext(create_infotext("", "dark", {"Seed": 5, "Steps": 3}, "0.1.0"))
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["Seed"], parsed["Steps"]) == ("", "dark", 5, 3)


def test_quoting_edge_values_round_trip():
    params = {"Note": '"quoted" start', "Pad": " spaced ", "Empty": "", "Colon": "a:b", "Path": "C:\\models\\x"}
    parsed = parse_infotext(create_infotext("x", "", {"Steps": 1, **params}, "0.1.0"))
    for key, value in params.items():
        assert parsed[key] == value, key


def test_text_without_parameter_line_is_all_prompt():
    assert parse_infotext("a lighthouse at dusk\nstormy sea") == {
        "Prompt": "a lighthouse at dusk\nstormy sea",
        "Negative prompt": "",
    }
    # A prompt line with one "word: word" pair is still prompt, as in A1111 (fewer than 3 pairs).
    assert parse_infotext("style: ink wash")["Prompt"] == "style: ink wash"


A1111_LORA = (
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, <lora:add_detail:0.6>\n"
    "Negative prompt: (worst quality, low quality:1.4), easynegative, bad hands\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3531893811, Size: 512x768, "
    "Model hash: 7f96a1a9ca, Model: anything-v5, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, "
    "Hires steps: 15, Hires upscaler: R-ESRGAN 4x+ Anime6B, "
    'Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1'
)

A1111_CONTROLNET = (
    "a photo of a woman dancing in a park, sunlight\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 1234, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'ControlNet 0: "Module: openpose_full, Model: control_v11p_sd15_openpose [cab727d4], Weight: 1.0, '
    "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, "
    'Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced", Version: v1.10.1'
)

A1111_HIRES_OLD = (
    "cinematic photo of an old fisherman, (detailed skin:1.2)\n"
    "close-up\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 42, Size: 640x448, Model hash: e6bb9ea85b, "
    "Model: sdXL_v10, Denoising strength: 0.35, Hires resize: 1280x896, Hires upscaler: Latent, "
    "Hires sampler: Euler, Version: v1.6.0"
)


def test_reads_real_a1111_infotexts():
    lora = parse_infotext(A1111_LORA)
    assert lora["Prompt"].endswith("<lora:add_detail:0.6>")
    assert lora["Negative prompt"] == "(worst quality, low quality:1.4), easynegative, bad hands"
    assert lora["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert lora["TI hashes"] == "easynegative: c74b4e810b03"
    assert (lora["Steps"], lora["CFG scale"], lora["Seed"], lora["Clip skip"]) == (28, 7, 3531893811, 2)
    assert (lora["Size-1"], lora["Size-2"], lora["Denoising strength"]) == (512, 768, 0.45)
    assert lora["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert lora["Version"] == "v1.10.1"

    cn = parse_infotext(A1111_CONTROLNET)
    unit = cn["ControlNet 0"]
    assert unit.startswith("Module: openpose_full, Model: control_v11p_sd15_openpose [cab727d4]")
    assert unit.endswith("Control Mode: Balanced")
    assert cn["CFG scale"] == 7.5 and cn["Model"] == "v1-5-pruned-emaonly"
    assert cn["Version"] == "v1.10.1"

    hires = parse_infotext(A1111_HIRES_OLD)
    assert hires["Prompt"] == "cinematic photo of an old fisherman, (detailed skin:1.2)\nclose-up"
    assert hires["Negative prompt"] == ""
    assert hires["Sampler"] == "DPM++ 2M Karras"  # old combined name passes through untouched
    assert (hires["Hires resize-1"], hires["Hires resize-2"]) == (1280, 896)
    assert hires["Hires sampler"] == "Euler"


def test_png_chunk_is_text_for_latin1_and_itxt_for_chinese(tmp_path):
    image = Image.new("RGB", (8, 8), (200, 30, 30))
    latin = create_infotext("a café at night", "", {"Steps": 2, "Seed": 1}, "0.1.0")
    path = save_png_atomic(image, tmp_path / "a.png", latin)
    assert path == tmp_path / "a.png"
    assert png_text_chunks(path.read_bytes())["parameters"] == ("tEXt", latin)

    chinese = create_infotext("一只红色的狐狸，水墨画", "模糊，低质量", {"Steps": 2, "Seed": 1}, "0.1.0")
    path = save_png_atomic(image, tmp_path / "b.png", chinese)
    assert png_text_chunks(path.read_bytes())["parameters"] == ("iTXt", chinese)
    assert read_parameters(path) == chinese
    assert parse_infotext(read_parameters(path))["Prompt"] == "一只红色的狐狸，水墨画"
    with Image.open(path) as reread:
        assert reread.getpixel((3, 3)) == (200, 30, 30)


def test_save_without_parameters_has_no_chunk(tmp_path):
    path = save_png_atomic(Image.new("L", (4, 4)), tmp_path / "plain.png", None)
    assert "parameters" not in png_text_chunks(path.read_bytes())
    assert read_parameters(path) is None


def test_read_parameters_from_exif_user_comment():
    # A1111 writes JPEG/WebP infotexts as EXIF UserComment: b"UNICODE\0" + UTF-16-BE.
    text = create_infotext("雪山, snow", "", {"Steps": 3, "Seed": 9}, "0.1.0")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
    for fmt in ("JPEG", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, fmt, exif=exif.tobytes())
        buf.seek(0)
        with Image.open(buf) as image:
            assert read_parameters(image) == text, fmt


def test_atomic_save_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    save_png_atomic(Image.new("RGB", (8, 8), "blue"), target, "old")
    before = target.read_bytes()

    def fail_midway(im, fp, tile, bufsize=0):
        fp.write(b"\0" * 64)  # some image data reaches the file, then the disk "fills up"
        raise OSError("No space left on device")

    monkeypatch.setattr(ImageFile, "_save", fail_midway)
    with pytest.raises(OSError, match="No space"):
        save_png_atomic(Image.new("RGB", (8, 8), "red"), target, "new")
    with pytest.raises(OSError, match="No space"):
        save_png_atomic(Image.new("RGB", (8, 8), "red"), tmp_path / "fresh.png", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert target.read_bytes() == before


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "x.png"
    for colour in ("red", "green"):
        save_png_atomic(Image.new("RGB", (8, 8), colour), target, colour)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert read_parameters(target) == "green"


def test_output_names_number_like_a1111(tmp_path):
    from huabu.core.atomic import publish_new, staged_path

    folder = tmp_path / "outputs"
    folder.mkdir()
    assert next(output_names(folder, 42)).name == "00000-42.png"
    (folder / "00000-42.png").write_bytes(b"png")
    assert next(output_names(folder, 7)).name == "00001-7.png"
    (folder / "00011-99.png").write_bytes(b"png")
    (folder / "notes.txt").write_text("not numbered")
    assert next(output_names(folder, 5, ".webp")) == folder / "00012-5.webp"
    # Published names are never handed out twice, and nothing but whole files ever carries one.
    names = []
    for index in range(5):
        with staged_path(folder, ".tmp.png") as staged:
            staged.write_bytes(b"image %d" % index)
            names.append(publish_new(staged, output_names(folder, 1)).name)
    assert len(set(names)) == 5 and all((folder / name).stat().st_size for name in names)
    assert not [name for name in os.listdir(folder) if name.startswith(".")]


def test_rejects_keys_a1111_cannot_read():
    with pytest.raises(ValueError, match="key"):
        create_infotext("p", "", {"Bad, key": 1}, "0.1.0")
    with pytest.raises(ValueError, match="Version"):
        create_infotext("p", "", {"Version": "x"}, "0.1.0")


def test_accepts_str_paths(tmp_path):
    path = save_png_atomic(Image.new("RGB", (2, 2)), str(tmp_path / "s.png"), "p")
    assert isinstance(path, Path) and read_parameters(str(path)) == "p"


def test_unreadable_files_raise_bad_image(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    for source in (tmp_path / "notes.png", tmp_path / "missing.png"):
        with pytest.raises(BadImage, match="cannot read image metadata"):
            read_parameters(source)


def test_save_creates_missing_folder(tmp_path):
    path = save_png_atomic(Image.new("RGB", (2, 2)), tmp_path / "a" / "b" / "c.png", "p")
    assert read_parameters(path) == "p"


# Pieces that break A1111's layout (newlines, a `Negative prompt:` line, quotes, edge whitespace, parameter-like
# text) mixed with Chinese, emoji and an emoji ZWJ sequence.
_PROMPT_TEXT = st.lists(st.sampled_from(list('ab ,:"\\\n\r\t{}[]()') + ["Negative prompt:", "Steps: 2, ", "猫",
                                                                        "红色", "😀", "🐱\u200d👤", "\u2028"]),
                        max_size=24).map("".join)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(prompt=_PROMPT_TEXT, negative=_PROMPT_TEXT)
def test_any_prompt_round_trips_and_ordinary_ones_are_written_as_a1111_writes_them(prompt, negative):
    text = create_infotext(prompt, negative, {"Steps": 20, "Sampler": "Euler a", "Size": "64x64"}, "0.1.0")
    parsed = parse_infotext(text)
    assert (parsed["Prompt"], parsed["Negative prompt"]) == (prompt, negative)
    assert parsed["Steps"] == 20 and parsed["Size-1"] == 64

    def ordinary(value: str) -> bool:
        lines = value.split("\n")
        return (all(line == line.strip() and not line.startswith("Negative prompt:") for line in lines)
                and value == value.strip() and not (value.startswith('"') and value.endswith('"')))

    if ordinary(prompt) and ordinary(negative) and prompt:
        negative_line = f"\nNegative prompt: {negative}" if negative else ""
        assert text.startswith(f"{prompt}{negative_line}\nSteps: 20, ")  # byte for byte A1111's layout


def test_a_prompt_with_a_negative_prompt_line_survives_a_png(tmp_path):
    prompt = "a red cat\nNegative prompt: blue dog"
    path = save_png_atomic(Image.new("RGB", (8, 8)), tmp_path / "x.png",
                           create_infotext(prompt, "", {"Steps": 2, "Seed": 1}, "0.1.0"))
    parsed = parse_infotext(read_parameters(path))
    assert parsed["Prompt"] == prompt and parsed["Negative prompt"] == "" and parsed["Seed"] == 1
