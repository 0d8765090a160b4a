"""The GenEval-style scene world: huabu-tiny's emoji scenes grown to 123 objects, counting and colour attributes,
with every caption in English and Chinese.

    a blue automobile and a red balloon on a white background   一辆蓝色的汽车和一个红色的气球在白色背景上
    three stars on a blue background                            蓝色背景上有三颗星星

Six categories, as GenEval names them: single object (size stated), two objects, counting (2-4 copies), colours
(one recoloured object), position (today's one-object captions with position and size) and colour attribution
(two recoloured objects). Each scene records its category and attributes in `Scene.attrs`, so it is scored
exactly (huabu.tiny.world_measure). This world sits beside huabu.tiny.scenes, whose stream the shipped huabu-tiny
was trained on and which stays as it is: the first 64 objects are those, in that order, rendered by its helpers.

Scenes are pure functions of (seed, index). Held out, by hash of names, and never rendered for training: object-
colour-position triples and object pairs (the same hashes as huabu.tiny.scenes, so for the first 64 objects they
are the same combinations), object-count pairs and object-colour attribute pairs. Evaluation scenes come only
from those.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np

from huabu.tiny import measure as M
from huabu.tiny import scenes as S

CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position", "colour_attribution")
# How often each category is drawn for training.
CATEGORY_WEIGHTS = (0.15, 0.2, 0.2, 0.15, 0.2, 0.1)
LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class WorldObject:
    char: str
    name: str  # as huabu.tiny.scenes names objects: the lower-cased Unicode name or CLDR's short name
    plural: str
    zh: str
    measure: str  # the Chinese measure word: 一辆汽车, 三颗星星


def _plural(name: str) -> str:
    if name.endswith("y") and name[-2] not in "aeiou":
        return name[:-1] + "ies"
    return name + ("es" if name.endswith(("s", "sh", "ch", "x")) else "s")


# The 64 objects of huabu.tiny.scenes, in its order: (plural where not regular, Chinese name, measure word).
_SHIPPED = (
    ("", "红苹果", "个"), ("", "香蕉", "根"), ("bunches of grapes", "葡萄", "串"), ("", "西瓜", "个"),
    ("", "柠檬", "个"), ("", "草莓", "颗"), ("", "菠萝", "个"), ("", "胡萝卜", "根"), ("", "蘑菇", "个"),
    ("", "牛油果", "个"), ("", "汉堡", "个"), ("slices of pizza", "披萨", "块"), ("", "甜甜圈", "个"),
    ("", "生日蛋糕", "个"), ("soft ice creams", "冰淇淋", "个"), ("", "火箭", "枚"), ("", "汽车", "辆"),
    ("", "公交车", "辆"), ("", "飞机", "架"), ("", "帆船", "艘"), ("", "树", "棵"), ("", "棕榈树", "棵"),
    ("cacti", "仙人掌", "棵"), ("", "向日葵", "朵"), ("", "玫瑰", "朵"), ("", "猫", "只"), ("", "狗", "只"),
    ("fish", "鱼", "条"), ("", "青蛙", "只"), ("", "猪", "头"), ("", "熊猫", "只"), ("", "企鹅", "只"),
    ("", "猫头鹰", "只"), ("", "乌龟", "只"), ("", "蝴蝶", "只"), ("", "螃蟹", "只"), ("", "章鱼", "只"),
    ("", "鲸鱼", "条"), ("", "大象", "头"), ("", "独角兽", "只"), ("", "瓢虫", "只"), ("", "兔子", "只"),
    ("", "幽灵", "个"), ("", "机器人", "个"), ("", "南瓜灯", "个"), ("snowmen", "雪人", "个"), ("", "星星", "颗"),
    ("", "月亮", "个"), ("", "云", "朵"), ("", "雨伞", "把"), ("fires", "火焰", "团"), ("", "水滴", "颗"),
    ("", "彩虹", "道"), ("", "红心", "颗"), ("", "吉他", "把"), ("", "足球", "个"), ("", "气球", "个"),
    ("", "礼物", "个"), ("", "皇冠", "顶"), ("", "宝石", "颗"), ("", "灯泡", "个"), ("", "礼帽", "顶"),
    ("", "泰迪熊", "只"), ("", "圣诞树", "棵"),
)
# The objects added here: (glyph, name, plural where not regular, Chinese name, measure word). Each was checked to
# be told apart from all others by huabu.tiny.measure's template identifier at every size this world draws.
_ADDED = (
    ("\U0001F350", "pear", "", "梨", "个"), ("\U0001F351", "peach", "peaches", "桃子", "个"),
    ("\U0001F95D", "kiwifruit", "", "猕猴桃", "个"), ("\U0001F33D", "ear of corn", "ears of corn", "玉米", "根"),
    ("\U0001F966", "broccoli", "heads of broccoli", "西兰花", "棵"), ("\U0001F346", "eggplant", "", "茄子", "个"),
    ("\U0001F336", "hot pepper", "", "辣椒", "根"), ("\U0001F9C0", "cheese wedge", "", "奶酪", "块"),
    ("\U0001F95A", "egg", "", "鸡蛋", "个"), ("\U0001F32D", "hot dog", "", "热狗", "个"),
    ("\U0001F36A", "cookie", "", "饼干", "块"), ("\U0001F36D", "lollipop", "", "棒棒糖", "根"),
    ("\u2615", "cup of coffee", "cups of coffee", "咖啡", "杯"), ("\U0001F6B2", "bicycle", "", "自行车", "辆"),
    ("\U0001F682", "steam locomotive", "", "火车", "列"), ("\U0001F681", "helicopter", "", "直升机", "架"),
    ("\U0001F69C", "tractor", "", "拖拉机", "辆"), ("\u2693", "anchor", "", "锚", "个"),
    ("\U0001F40D", "snake", "", "蛇", "条"), ("\U0001F992", "giraffe", "", "长颈鹿", "只"),
    ("\U0001F98A", "fox face", "", "狐狸", "只"), ("\U0001F428", "koala", "", "考拉", "只"),
    ("\U0001F42F", "tiger face", "", "老虎", "只"), ("\U0001F981", "lion face", "", "狮子", "只"),
    ("\U0001F42E", "cow face", "", "奶牛", "头"), ("\U0001F435", "monkey face", "", "猴子", "只"),
    ("\U0001F424", "baby chick", "", "小鸡", "只"), ("\U0001F986", "duck", "", "鸭子", "只"),
    ("\U0001F41D", "honeybee", "", "蜜蜂", "只"), ("\U0001F40C", "snail", "", "蜗牛", "只"),
    ("\U0001F42C", "dolphin", "", "海豚", "只"), ("\U0001F99C", "parrot", "", "鹦鹉", "只"),
    ("\U0001F9A9", "flamingo", "", "火烈鸟", "只"), ("\U0001F341", "maple leaf", "maple leaves", "枫叶", "片"),
    ("\U0001F337", "tulip", "", "郁金香", "朵"), ("\u26A1", "lightning bolt", "", "闪电", "道"),
    ("\u2600", "sun", "", "太阳", "个"), ("\U0001F511", "key", "", "钥匙", "把"),
    ("\U0001F514", "bell", "", "铃铛", "个"),
    ("\U0001F4F7", "camera", "", "相机", "台"), ("\u2702", "pair of scissors", "pairs of scissors", "剪刀", "把"),
    ("\u270F", "pencil", "", "铅笔", "支"), ("\U0001F3C0", "basketball", "", "篮球", "个"),
    ("\U0001F3B2", "die", "dice", "骰子", "个"), ("\U0001F3BA", "trumpet", "", "小号", "支"),
    ("\U0001F941", "drum", "", "鼓", "面"), ("\U0001F45F", "running shoe", "", "运动鞋", "只"),
    ("\U0001F3E0", "house", "", "房子", "座"), ("\u26FA", "tent", "", "帐篷", "顶"),
    ("\U0001F6F8", "flying saucer", "", "飞碟", "个"), ("\U0001F528", "hammer", "", "锤子", "把"),
    ("\U0001F9F2", "magnet", "", "磁铁", "块"), ("\U0001F380", "ribbon", "", "蝴蝶结", "个"),
    ("\U0001F9E2", "baseball cap", "", "棒球帽", "顶"), ("\U0001F457", "dress", "", "连衣裙", "件"),
    ("\U0001F6F6", "canoe", "", "独木舟", "艘"), ("\U0001F994", "hedgehog", "", "刺猬", "只"),
    ("\U0001F996", "t-rex", "", "霸王龙", "只"), ("\U0001F42A", "camel", "", "骆驼", "头"),
)
OBJECTS: tuple[WorldObject, ...] = tuple(
    WorldObject(ch, name, plural or _plural(name), zh, measure)
    for (ch, name), (plural, zh, measure) in zip(S.OBJECTS, _SHIPPED, strict=True)
) + tuple(WorldObject(ch, name, plural or _plural(name), zh, measure) for ch, name, plural, zh, measure in _ADDED)
OBJECT_NAMES: tuple[str, ...] = tuple(o.name for o in OBJECTS)

# Objects that take a colour attribute: glyphs drawn mostly in one saturated hue (60-100% of their pixels within
# 30 degrees of it, the rest outlines, windows, wheels) whose name says no colour. They are recoloured by tinting:
# every saturated pixel becomes the named colour, shaded by its brightness against the body's median (kept within
# 0.85-1.1 so it still reads as that colour); whites, greys and blacks (wheels, eyes) stay as drawn.
RECOLOURABLE: tuple[int, ...] = tuple(OBJECT_NAMES.index(n) for n in (
    "automobile", "umbrella", "star", "balloon", "crown", "fish", "droplet", "teddy bear", "key", "bell", "ribbon",
    "baseball cap", "dress", "canoe", "tent", "lightning bolt",
))
ATTRIBUTE_SATURATION = 0.25

EN_NUMBERS = {2: "two", 3: "three", 4: "four"}
ZH_NUMBERS = {2: "两", 3: "三", 4: "四"}
COUNTS = tuple(EN_NUMBERS)
ZH_COLOURS = {"red": "红色", "orange": "橙色", "yellow": "黄色", "green": "绿色", "blue": "蓝色", "purple": "紫色",
              "pink": "粉色", "white": "白色", "black": "黑色", "gray": "灰色"}
ZH_POSITIONS = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方", "center": "中间",
                "top left": "左上角", "top right": "右上角", "bottom left": "左下角", "bottom right": "右下角"}
ZH_SIZES = {"small": "小的", "large": "大的"}

# Counting: copies in the cells of a 2 x 2 grid, small enough that neighbours stay >= 4 px apart after jitter.
COUNT_SIZE = 22
COUNT_CELL = (S.IMAGE_SIZE - 2 * S.MARGIN) // 2
COUNT_JITTER = 2


# --- held-out combinations ---

def is_held_out_triple(obj: int, colour: str, position: str) -> bool:
    return S.stable_fraction("triple", OBJECT_NAMES[obj], colour, position) < S.HELD_OUT_FRACTION


def is_held_out_pair(a: int, b: int) -> bool:
    lo, hi = sorted((OBJECT_NAMES[a], OBJECT_NAMES[b]))
    return S.stable_fraction("pair", lo, hi) < S.HELD_OUT_FRACTION


def is_held_out_count(obj: int, count: int) -> bool:
    return S.stable_fraction("count", OBJECT_NAMES[obj], count) < S.HELD_OUT_FRACTION


def is_held_out_attribute(obj: int, colour: str) -> bool:
    """An object-colour attribute pair ("a blue automobile"): never drawn for training, in any category."""
    return S.stable_fraction("attribute", OBJECT_NAMES[obj], colour) < S.HELD_OUT_FRACTION


def is_held_out(scene: S.Scene) -> bool:
    """Whether a scene holds any held-out combination (training scenes never do)."""
    a = scene.attrs
    objs, colours = a["objects"], a["colours"]
    if any(c is not None and is_held_out_attribute(o, c) for o, c in zip(objs, colours)):
        return True
    if a["category"] == "counting":
        return is_held_out_count(objs[0], len(objs))
    if len(objs) == 2 and is_held_out_pair(*objs):
        return True
    return any(p is not None and is_held_out_triple(o, a["background"], p) for o, p in zip(objs, a["positions"]))


# --- glyphs and rendering ---

@cache
def glyph(obj: int, size: int, colour: str | None = None) -> np.ndarray:
    """Object `obj` as float32 RGBA in [0, 1] at `size`, tinted to a named colour if one is given."""
    g = S.char_glyph(OBJECTS[obj].char, size)
    if colour is None:
        return g
    rgb = g[..., :3]
    value = rgb.max(-1)
    body = (g[..., 3] > 0) & ((value - rgb.min(-1)) > ATTRIBUTE_SATURATION * np.maximum(value, 1e-6))
    shade = np.clip(value / np.median(value[body]), 0.85, 1.1)
    tinted = g.copy()
    target = np.asarray(S.COLOURS[colour], np.float32) / 255.0
    tinted[..., :3][body] = np.clip(target * shade[body, None], 0.0, 1.0)
    return tinted


@cache
def main_colour(obj: int) -> str:
    """The named colour most of the object's pixels are nearest to: counted copies are drawn on any other
    background, since a glyph on its own colour falls apart into pieces (a red rose on red is its leaves)."""
    g = glyph(obj, COUNT_SIZE)
    return S.COLOUR_NAMES[int(M.colour_votes(g[..., :3][g[..., 3] > 0.5] * 255).argmax())]


def render(scene: S.Scene) -> np.ndarray:
    """A world scene as an HxWx3 uint8 array, by huabu.tiny.scenes' compositor."""
    colours = scene.attrs["colours"]
    return S.compose(scene.background, [(glyph(p.obj, p.size, c), p.x, p.y) for p, c in zip(scene.objects, colours)])


# --- captions ---

def _zh_noun(obj: int, colour: str | None = None, size: str | None = None) -> str:
    o = OBJECTS[obj]
    adjective = (ZH_COLOURS[colour] + "的" if colour else "") + (ZH_SIZES[size] if size else "")
    return f"一{o.measure}{adjective}{o.zh}"


def _en_noun(obj: int, colour: str | None = None, size: str | None = None) -> str:
    words = " ".join(w for w in (size, colour, OBJECT_NAMES[obj]) if w)
    return f"{S.article(words)} {words}"


def en_background(background: str) -> str:
    return f"on {S.article(background)} {background} background"


def captions(category: str, objs: list[int], background: str, positions: list[str | None],
             sizes: list[str | None], colours: list[str | None]) -> tuple[str, str]:
    """The English and Chinese captions of a scene: what is stated in one says the same in the other."""
    bg_zh = ZH_COLOURS[background]
    if category == "counting":
        n, o = len(objs), OBJECTS[objs[0]]
        return (f"{EN_NUMBERS[n]} {o.plural} {en_background(background)}",
                f"{bg_zh}背景上有{ZH_NUMBERS[n]}{o.measure}{o.zh}")
    if len(objs) == 1:
        obj, pos = objs[0], positions[0]
        if pos is not None:
            return (f"{_en_noun(obj, size=sizes[0])} {S.POSITION_PHRASES[pos]} {en_background(background)}",
                    f"{_zh_noun(obj, size=sizes[0])}在{bg_zh}背景的{ZH_POSITIONS[pos]}")
        return (f"{_en_noun(obj, colours[0], sizes[0])} {en_background(background)}",
                f"{_zh_noun(obj, colours[0], sizes[0])}在{bg_zh}背景上")
    (a, b), (ca, cb) = objs, colours
    if positions[0] is not None:  # a stated pair layout, as huabu.tiny.scenes words it
        pa, pb = positions
        en = (f"{_en_noun(a, ca)} {S.POSITION_PHRASES[pa]} and {_en_noun(b, cb)} {S.POSITION_PHRASES[pb]} "
              f"{en_background(background)}")
        return en, f"{bg_zh}背景上，{ZH_POSITIONS[pa]}是{_zh_noun(a, ca)}，{ZH_POSITIONS[pb]}是{_zh_noun(b, cb)}"
    return (f"{_en_noun(a, ca)} and {_en_noun(b, cb)} {en_background(background)}",
            f"{_zh_noun(a, ca)}和{_zh_noun(b, cb)}在{bg_zh}背景上")


def _scene(category: str, background: str, placed: list[S.Placed], colours: list[str | None],
           say_position: bool, say_size: bool) -> S.Scene:
    objs = [p.obj for p in placed]
    positions = [p.position if say_position else None for p in placed]
    sizes = [p.size_name if say_size else None for p in placed]
    en, zh = captions(category, objs, background, positions, sizes, colours)
    attrs = {"category": category, "objects": objs, "background": background,
             "positions": [p.position for p in placed], "sizes": [p.size_name for p in placed], "colours": colours,
             "said": {"position": say_position, "size": say_size}, "caption_zh": zh}
    return S.Scene(background, tuple(placed), en, attrs)


# --- scene kinds ---

def single(rng: np.random.Generator, category: str, obj: int, background: str, position: str, size_name: str,
           colour: str | None = None, say_position: bool = True, say_size: bool = True) -> S.Scene:
    """One object: "single_object" (size said), "position" (position and size said) or "colours" (recoloured)."""
    size = S.SIZES[size_name]
    placed = S.Placed(obj, *S.jitter(rng, *S.anchor_xy(position, size), size), size, position, size_name)
    return _scene(category, background, [placed], [colour], say_position, say_size)


def pair(rng: np.random.Generator, category: str, a: int, b: int, background: str, layout: tuple[str, str],
         colours: tuple[str | None, str | None] = (None, None), say_position: bool = False) -> S.Scene:
    """Two objects side by side: "two_objects", or "colour_attribution" with a colour for each."""
    placed = [S.Placed(o, *S.jitter(rng, *S.anchor_xy(side, S.PAIR_SIZE), S.PAIR_SIZE), S.PAIR_SIZE, side, None)
              for o, side in ((a, layout[0]), (b, layout[1]))]
    return _scene(category, background, placed, list(colours), say_position, False)


def counting(rng: np.random.Generator, obj: int, count: int, background: str) -> S.Scene:
    """`count` copies of one object in distinct cells of a 2 x 2 grid."""
    cells = np.sort(rng.choice(4, size=count, replace=False))
    placed = []
    for cell in cells:
        offset = (COUNT_CELL - COUNT_SIZE) // 2
        x = S.MARGIN + COUNT_CELL * (cell % 2) + offset + int(rng.integers(-COUNT_JITTER, COUNT_JITTER + 1))
        y = S.MARGIN + COUNT_CELL * (cell // 2) + offset + int(rng.integers(-COUNT_JITTER, COUNT_JITTER + 1))
        placed.append(S.Placed(obj, x, y, COUNT_SIZE, None, None))
    return _scene("counting", background, placed, [None] * count, False, False)


def _pick(rng: np.random.Generator, values: tuple) -> object:
    return values[int(rng.integers(len(values)))]


def _other_colour(rng: np.random.Generator, *avoid: str) -> str:
    return _pick(rng, tuple(c for c in S.COLOUR_NAMES if c not in avoid))


def random_scene(rng: np.random.Generator, category: str) -> S.Scene:
    """A training scene of `category` drawn from `rng`, held-out combinations included (the caller rejects them):
    as in huabu.tiny.scenes, sizes and pair layouts are said half of the time."""
    n = len(OBJECTS)
    background = _pick(rng, S.COLOUR_NAMES)
    if category in ("single_object", "position"):
        say_position = category == "position"
        return single(rng, category, int(rng.integers(n)), background, _pick(rng, S.POSITION_NAMES),
                      _pick(rng, S.SIZE_NAMES), say_position=say_position, say_size=rng.random() < 0.5)
    if category == "two_objects":
        a, b = (int(v) for v in rng.choice(n, size=2, replace=False))
        return pair(rng, category, a, b, background, _pick(rng, S.PAIR_LAYOUTS),
                    say_position=rng.random() < 0.5)
    if category == "counting":
        obj = int(rng.integers(n))
        return counting(rng, obj, int(_pick(rng, COUNTS)), _other_colour(rng, main_colour(obj)))
    if category == "colours":
        colour = _other_colour(rng, background)
        return single(rng, category, int(_pick(rng, RECOLOURABLE)), background, _pick(rng, S.POSITION_NAMES),
                      "large", colour, say_position=False, say_size=False)
    a, b = (int(v) for v in rng.choice(RECOLOURABLE, size=2, replace=False))
    ca = _other_colour(rng, background)
    return pair(rng, category, a, b, background, _pick(rng, S.PAIR_LAYOUTS), (ca, _other_colour(rng, background, ca)))


def training_scene(seed: int, index: int) -> S.Scene:
    """Scene `index` of this world's training stream for `seed`: never one holding a held-out combination."""
    rng = np.random.default_rng([seed, index, 22])
    category = CATEGORIES[int(rng.choice(len(CATEGORIES), p=CATEGORY_WEIGHTS))]
    while True:
        scene = random_scene(rng, category)
        if not is_held_out(scene):
            return scene


# --- evaluation scenes ---

def held_out_combinations(category: str) -> list[tuple]:
    """What each category's evaluation draws from: only combinations never rendered for training."""
    n = range(len(OBJECTS))
    if category in ("single_object", "position"):
        return [t for t in itertools.product(n, S.COLOUR_NAMES, S.POSITION_NAMES) if is_held_out_triple(*t)]
    if category == "two_objects":
        return [p for p in itertools.combinations(n, 2) if is_held_out_pair(*p)]
    if category == "counting":
        return [p for p in itertools.product(n, COUNTS) if is_held_out_count(*p)]
    return [p for p in itertools.product(RECOLOURABLE, S.COLOUR_NAMES) if is_held_out_attribute(*p)]


def eval_scenes(category: str, count: int, seed: int = 2222) -> list[S.Scene]:
    """`count` held-out scenes of one category, the same for a given (category, count, seed)."""
    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    combos = held_out_combinations(category)
    scenes = []
    for k in rng.permutation(max(count, len(combos)))[:count] % len(combos):
        combo = combos[int(k)]
        background = _pick(rng, S.COLOUR_NAMES)
        if category in ("single_object", "position"):
            obj, background, position = combo
            scenes.append(single(rng, category, obj, background, position, _pick(rng, S.SIZE_NAMES),
                                 say_position=category == "position"))
        elif category == "two_objects":
            a, b = combo if rng.random() < 0.5 else combo[::-1]
            scenes.append(pair(rng, category, a, b, background, _pick(rng, S.PAIR_LAYOUTS)))
        elif category == "counting":
            scenes.append(counting(rng, *combo, _other_colour(rng, main_colour(combo[0]))))
        elif category == "colours":
            obj, colour = combo
            background = _other_colour(rng, colour)
            scenes.append(single(rng, category, obj, background, _pick(rng, S.POSITION_NAMES), "large", colour,
                                 say_position=False, say_size=False))
        else:  # colour attribution: two held-out attribute pairs of different objects and colours
            others = [c for c in combos if c[0] != combo[0] and c[1] != combo[1]]
            other = others[int(rng.integers(len(others)))]
            background = _other_colour(rng, combo[1], other[1])
            scenes.append(pair(rng, category, combo[0], other[0], background, _pick(rng, S.PAIR_LAYOUTS),
                               (combo[1], other[1])))
    return scenes
