"""Text scenes for huabu-tiny's glyph ControlNet: the emoji scenes of huabu.tiny.scenes with a word written beside
the object, in Noto Sans CJK, and the word quoted in the caption as AnyText's prompts quote it:

    a cat at the top and the words "画布" at the bottom on a red background

Words are 1-4 Chinese characters or 1-8 Latin letters from a fixed vocabulary (VOCABULARY: 524 Chinese characters
and the 52 Latin letters). The Chinese ones are the 524 GB2312 level-1 (common) characters with the least ink at
24 px in Noto Sans CJK, listed here so the vocabulary does not depend on the installed font version: a 128 x 128
scene holds 4 characters at 24-30 px, and simpler characters stay legible there after the VAE's 8x (huabu-tiny's
4x) compression. Images are 128 x 128 because at 64 x 64 a character gets 12-15 px, less than the VAE keeps apart.

Each word is drawn by the glyph preprocessor's own `draw_word` into its box, so the glyph map of a scene is exactly
its text's mask. Scenes are pure functions of (seed, index); a fixed tenth of all strings (by hash) is held out,
never rendered for training, and the evaluation strings are drawn from them only: every evaluated string is a
combination of characters the model never saw together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from huabu.engine.control.glyph import draw_word, glyph_map
from huabu.engine.fonts import find_cjk_font
from huabu.tiny import scenes as S

TEXT_IMAGE_SIZE = 128
CJK_VOCAB = (
    "艾凹叭八白伴半办北贝本比毕币必卞兵冰并卜补不布步才仓沧叉岔诧铲产长厂抄吵炒车尘沉衬尺斥冲仇出川次从丛"
    "淬村寸打大歹代丹旦淡当刀灯邓点叼刁吊丁盯叮钉订东冬冻抖斗杜兑队对多夺儿尔二乏法凡泛方仿访飞分汾份忿丰"
    "冯夫伏浮复付父负讣干甘杆竿杠戈个工功公弓巩共勾沟沽古谷瓜关光广归过汗汉夯号禾合河亨洪红乎护互沪户花华"
    "化怀坏环幻卉汇伙火击讥吉几己济计记价歼尖见件江交叫节杰芥介巾斤今仅近尽京井纠玖久灸九臼句决卡开刊扛亢"
    "可坑孔口矿旷况亏扩垃栏拦兰烂牢乐冷礼立力凉疗辽了劣邻令刘六卢庐吕伦仑沦论马买芒茫忙毛矛么门们米灭名末"
    "牟木乃内年念鸟柠狞宁拧泞牛浓农女乓沛烹片乒坪平评扑仆朴七齐岂乞企气汽泣讫洽扦钎千迁仟欠乔巧芹沁丘去全"
    "犬让壬仁人任认刃日冗汝入三伞扫莎杀沙纱杉山衫闪汕上芍勺少涉社沈生升尸十石什实识矢式示士仕市手守书术水"
    "司寺巳怂讼诉岁孙它台太汰坛讨天厅汀头凸土吐屯托瓦外丸万汪王亡忘韦为未位卫文问沃乌污无五午戊勿夕汐习下"
    "吓先仙纤乡详小肖芯辛忻心兴行兄许玄穴寻汛讯丫牙严炎沿衍羊洋爷冶也页业叶一仪沂已乙以艺亿亦忆义议吟尹引"
    "印泳永尤右又迂于予与宇玉芋吁元曰约月云匀允孕灾在早灶怎扎札轧咋乍诈沾占丈仗兆召珍贞针诊正证芝支汁之址"
    "止只志治中众州咒竹主贮注爪专庄壮灼仔子字总卒左作"
)
LATIN_VOCAB = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VOCABULARY = CJK_VOCAB + LATIN_VOCAB
SCRIPTS = {"zh": (CJK_VOCAB, 1, 4), "latin": (LATIN_VOCAB, 1, 8)}  # characters, shortest and longest word
OBJECT_SIZE = 40
# The object's place and the half of the image the word goes in (the other half).
LAYOUTS = {"top": "bottom", "top left": "bottom", "top right": "bottom", "bottom": "top", "bottom left": "top",
           "bottom right": "top"}
EDGE = 4  # pixels kept free between a word's box and the image edge
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class TextScene:
    """One text scene: an object on a background and a word in its box (x0, y0, x1, y1)."""

    background: str
    obj: int
    position: str
    text: str
    script: str  # "zh" or "latin"
    box: tuple[int, int, int, int]
    caption: str

    @property
    def attrs(self) -> dict:
        """The scenes.jsonl fields besides the caption; `text_boxes` is what glyph ControlNet training reads."""
        return {"objects": [self.obj], "background": self.background, "positions": [self.position],
                "text": self.text, "script": self.script, "text_boxes": [[self.text, *self.box]]}


def is_held_out_string(text: str) -> bool:
    """The fixed held-out strings: never rendered for training."""
    return S.stable_fraction("text", text) < HELD_OUT_FRACTION


def text_colour(background: str) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones."""
    r, g, b = S.COLOURS[background]
    return (20, 20, 20) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (245, 245, 245)


def _word(rng: np.random.Generator, script: str) -> str:
    chars, shortest, longest = SCRIPTS[script]
    length = int(rng.integers(shortest, longest + 1))
    return "".join(chars[int(i)] for i in rng.integers(len(chars), size=length))


def _box(rng: np.random.Generator, text: str, script: str, half: str) -> tuple[int, int, int, int]:
    """A box for `text` in the top or bottom half: character-sized (a square per Chinese character,
    0.75 of the height per Latin letter), no wider than the image allows."""
    size = TEXT_IMAGE_SIZE
    height = int(rng.integers(24, 33))
    per_char = height if script == "zh" else 0.75 * height
    width = min(size - 2 * EDGE, max(height, round(per_char * len(text))))
    x0 = int(rng.integers(EDGE, size - EDGE - width + 1))
    low, high = (EDGE, size // 2 - height) if half == "top" else (size // 2, size - EDGE - height)
    y0 = int(rng.integers(low, max(low, high) + 1))
    return x0, y0, x0 + width, y0 + height


def text_scene(rng: np.random.Generator, text: str, script: str, obj: int, background: str,
               position: str) -> TextScene:
    half = LAYOUTS[position]
    box = _box(rng, text, script, half)
    phrase = S.POSITION_PHRASES[half]
    noun = S.OBJECT_NAMES[obj]
    caption = (f'{S.article(noun)} {noun} {S.POSITION_PHRASES[position]} and the words "{text}" {phrase} on '
               f"{S.article(background)} {background} background")
    return TextScene(background, obj, position, text, script, box, caption)


def _random_scene(rng: np.random.Generator, text: str, script: str) -> TextScene:
    background = S.COLOUR_NAMES[rng.integers(len(S.COLOUR_NAMES))]
    position = tuple(LAYOUTS)[rng.integers(len(LAYOUTS))]
    return text_scene(rng, text, script, int(rng.integers(len(S.OBJECTS))), background, position)


def training_text_scene(seed: int, index: int) -> TextScene:
    """Text scene `index` of the training stream for `seed`: half Chinese, half Latin, never a held-out string."""
    rng = np.random.default_rng([seed, index, 7])
    script = "zh" if rng.random() < 0.5 else "latin"
    while True:
        text = _word(rng, script)
        if not is_held_out_string(text):
            return _random_scene(rng, text, script)


def eval_text_scenes(count: int = 200, seed: int = 2024) -> list[TextScene]:
    """`count` held-out scenes with distinct held-out strings, the first half Chinese and the rest Latin."""
    rng = np.random.default_rng(seed)
    scenes, seen = [], set()
    for script, wanted in (("zh", (count + 1) // 2), ("latin", count // 2)):
        made = 0
        while made < wanted:
            text = _word(rng, script)
            if is_held_out_string(text) and text not in seen:
                seen.add(text)
                scenes.append(_random_scene(rng, text, script))
                made += 1
    return scenes


def render_text_scene(scene: TextScene) -> np.ndarray:
    """The scene as a 128 x 128 x 3 uint8 array: the object on its background, then the word over it."""
    size = TEXT_IMAGE_SIZE
    glyph = S.char_glyph(S.OBJECTS[scene.obj][0], OBJECT_SIZE)
    canvas = S.compose(scene.background, [(glyph, *S.anchor_xy(scene.position, OBJECT_SIZE, size))], size)
    mask = Image.new("L", (size, size), 0)
    draw_word(ImageDraw.Draw(mask), scene.text, scene.box, str(find_cjk_font()))
    alpha = np.asarray(mask, np.float32)[..., None] / 255.0
    colour = np.asarray(text_colour(scene.background), np.float32)
    return np.round(canvas * (1 - alpha) + colour * alpha).astype(np.uint8)


def scene_glyph_map(scene: TextScene) -> Image.Image:
    """The glyph control map of a scene: its word, white on black, in its box."""
    return glyph_map([(scene.text, scene.box)], TEXT_IMAGE_SIZE, TEXT_IMAGE_SIZE)
