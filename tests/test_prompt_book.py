import re
from collections import Counter

import pytest
from PIL import Image

from huabu.core.errors import HuabuError, InvalidRequest
from huabu.engine.prompts.book import PromptBookError, PromptPart, add_part, apply_styles, load_book

MAIN = ["subject", "details", "action", "background", "colour", "lighting", "style", "quality"]
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def book():
    return load_book()


def test_catalogue_is_well_filled(book):
    counts = Counter(part.category for part in book.parts)
    assert set(book.categories) == {*MAIN, "negative"}
    assert sum(counts[c] for c in MAIN) >= 200
    assert min(counts[c] for c in MAIN) >= 15
    assert counts["negative"] >= 40
    assert len(book.styles) >= 60
    negatives = {p.prompt for p in book.parts if p.category == "negative"}
    for word in ("low quality", "blurry", "black and white", "missing fingers", "extra limbs", "deformed",
                 "cropped", "watermark", "text", "jpeg artifacts"):
        assert word in negatives, word


def test_every_entry_is_bilingual(book):
    for cid, labels in book.categories.items():
        assert labels["en"].strip() and CJK.search(labels["zh"]), cid
    for part in book.parts:
        assert part.en.strip() and part.prompt.strip() and CJK.search(part.zh), part
    for name, style in book.styles.items():
        assert re.fullmatch(r"[a-z0-9_]+", name)
        assert style.name == name and style.name_en.strip() and CJK.search(style.name_zh), name
    # No two parts of a category, nor two styles, share a zh label.
    for cid in book.categories:
        labels = [p.zh for p in book.parts if p.category == cid]
        assert len(labels) == len(set(labels)), cid
    assert len({s.name_zh for s in book.styles.values()}) == len(book.styles)


def test_style_templates(book):
    for style in book.styles.values():
        assert style.prompt.count("{prompt}") <= 1, style.name
        assert "{prompt}" not in style.negative_prompt, style.name
        # every style has its example, made with huabu-tiny through the style (read back by Pillow, not huabu)
        with Image.open(style.example) as example:
            assert example.size == (64, 64) and "Model: huabu-tiny" in example.info["parameters"], style.name
            assert style.prompt.split("{prompt}")[0].strip(", ") in example.info["parameters"], style.name
    # The course's craft styles are there.
    for name in ("paper_cut", "ink_wash", "spring_festival", "pixel_art", "anime", "render_3d", "oil_painting"):
        assert name in book.styles


def test_apply_one_style(book):
    ink = book.styles["ink_wash"]
    prompt, negative = apply_styles("a crane over a lake", "", ["ink_wash"], book)
    assert prompt == ink.prompt.replace("{prompt}", "a crane over a lake")
    assert negative == ink.negative_prompt


def test_styles_nest_in_order_and_negatives_join(book):
    a, b = book.styles["ink_wash"], book.styles["spring_festival"]
    prompt, negative = apply_styles("a fox", "ugly", ["ink_wash", "spring_festival"], book)
    assert prompt == b.prompt.replace("{prompt}", a.prompt.replace("{prompt}", "a fox"))
    assert negative == f"ugly, {a.negative_prompt}, {b.negative_prompt}"
    reverse, _ = apply_styles("a fox", "ugly", ["spring_festival", "ink_wash"], book)
    assert reverse == a.prompt.replace("{prompt}", b.prompt.replace("{prompt}", "a fox"))
    assert apply_styles("a fox", "ugly", [], book) == ("a fox", "ugly")


def test_unknown_style_names_close_matches(book):
    with pytest.raises(InvalidRequest, match=r"unknown style 'inkwash'.*ink_wash"):
        apply_styles("x", "", ["anime", "inkwash"], book)
    with pytest.raises(InvalidRequest, match="unknown style 'zzzzzzzz'"):
        apply_styles("x", "", ["zzzzzzzz"], book)


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_user_folder_adds_and_overrides(tmp_path):
    user = write(tmp_path / "mine", "styles.yaml", """
- name: ink_wash
  name_zh: 我的水墨
  name_en: My ink
  prompt: "ink sketch of {prompt}"
- name: signature
  name_zh: 落款
  name_en: Signature stamp
  prompt: "red seal stamp in the corner"
  example: examples/signature.png
""")
    (user / "examples").mkdir()
    (user / "examples" / "signature.png").write_bytes(b"png")
    write(user, "parts.yaml", """
subject:
  parts:
    - {en: Cat, zh: 小猫咪, prompt: a fluffy kitten}
    - {en: Tiger, zh: 老虎, prompt: a tiger}
mood:
  zh: 情绪
  en: Mood
  parts:
    - {en: Calm, zh: 平静, prompt: calm mood}
""")
    shipped = load_book()
    book = load_book([user, tmp_path / "does-not-exist"])
    assert book.styles["ink_wash"].name_zh == "我的水墨"
    assert book.styles["ink_wash"].negative_prompt == ""
    assert book.styles["signature"].example == str(user / "examples" / "signature.png")
    assert len(book.styles) == len(shipped.styles) + 1
    subject = [p for p in book.parts if p.category == "subject"]
    cat = next(p for p in subject if p.en == "Cat")
    assert (cat.zh, cat.prompt) == ("小猫咪", "a fluffy kitten")
    # An override keeps the shipped position; a new part goes last.
    assert [p.en for p in subject] == [p.en for p in shipped.parts if p.category == "subject"] + ["Tiger"]
    assert book.categories["mood"] == {"zh": "情绪", "en": "Mood"}
    assert book.categories["subject"] == shipped.categories["subject"]

    # A template without {prompt} is appended; an empty negative is skipped when joining.
    prompt, negative = apply_styles("a cat", "blurry", ["ink_wash", "signature"], book)
    assert prompt == "ink sketch of a cat, red seal stamp in the corner"
    assert negative == "blurry"


def test_empty_prompt_leaves_no_dangling_commas(book):
    prompt, negative = apply_styles("", "", ["photo_film"], book)
    assert prompt == "shot on 35mm film, soft grain, faded colours, slight light leak, nostalgic"
    assert negative == book.styles["photo_film"].negative_prompt


@pytest.mark.parametrize(
    ("filename", "text", "message"),
    [
        ("styles.yaml", "- {name: a, name_zh: 甲, name_en: A}\n", r"style 'a': missing key 'prompt'"),
        (
            "styles.yaml",
            "- {name: two, name_zh: 二, name_en: Two, prompt: '{prompt} and {prompt}'}\n",
            r"style 'two': 'prompt' holds \{prompt\} more than once",
        ),
        (
            "styles.yaml",
            "- {name: d, name_zh: 丁, name_en: D, prompt: x}\n- {name: d, name_zh: 丁, name_en: D, prompt: y}\n",
            r"style 'd': duplicate style name",
        ),
        (
            "styles.yaml",
            "- {name: e, name_zh: '', name_en: E, prompt: x}\n",
            r"style 'e': 'name_zh' must be a non-empty",
        ),
        (
            "styles.yaml",
            "- {name: t, name_zh: 丁, name_en: T, prompt: x, negativ_prompt: y}\n",
            r"style 't': unknown key 'negativ_prompt'",
        ),
        ("styles.yaml", "name: not a list\n", "expected a list of styles"),
        ("styles.yaml", "- {name: [unclosed\n", "not valid YAML"),
        (
            "parts.yaml",
            "subject:\n  parts:\n    - {en: Cat, zh: 猫}\n",
            r"category 'subject' part 'Cat': missing key 'prompt'",
        ),
        ("parts.yaml", "new:\n  en: New\n  parts: []\n", r"category 'new': missing key 'zh'"),
        (
            "parts.yaml",
            "mood:\n  zh: 情绪\n  en: Mood\n  parts:\n    - {en: A, zh: 甲, prompt: a}\n"
            "    - {en: A, zh: 乙, prompt: b}\n",
            r"category 'mood' part 'A': duplicate part name",
        ),
        ("parts.yaml", "mood: {zh: 情绪, en: Mood}\nmood: {zh: 心情, en: Mood}\n", "duplicate key 'mood'"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, filename, text, message):
    user = write(tmp_path / "bad", filename, text)
    with pytest.raises(PromptBookError, match=message) as info:
        load_book([user])
    assert isinstance(info.value, HuabuError)
    assert "\n" not in str(info.value)
    assert str(user / filename) in str(info.value)


def test_add_part():
    cat = PromptPart("subject", "Cat", "猫", "a cat")
    glow = PromptPart("lighting", "Golden hour", "黄金时刻", "golden hour sunlight")
    assert add_part("", cat) == "a cat"
    assert add_part("masterpiece", cat) == "masterpiece, a cat"
    assert add_part("masterpiece, ", cat) == "masterpiece, a cat"
    assert add_part("masterpiece, A Cat, snow", cat) == "masterpiece, A Cat, snow"
    assert add_part("a cat sleeping", cat) == "a cat sleeping, a cat"  # substring of another piece is not a match
    assert add_part(add_part("a cat", glow), glow) == "a cat, golden hour sunlight"
