"""A1111 prompt syntax: attention weights, prompt editing and alternation schedules, LoRA tags.

Behaviour follows AUTOMATIC1111 webui 1.10 (`modules/prompt_parser.py`, `extra_networks`); the parsers are
hand-written because no library speaks this syntax. A1111 treats almost any text as a valid prompt: brackets
that do not form a construct stay literal text, and a prompt whose editing syntax cannot be parsed at all is
used unscheduled, as written. Deliberate differences from A1111 are marked "A1111 differs".
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from huabu.core.errors import InvalidRequest, PromptSyntaxError

# --- LoRA tags ---------------------------------------------------------------------------------------------

# A1111's extra-network tag: `<kind:arg:arg...>`. Only LoRA kinds are taken out; other kinds stay in the text.
_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
_LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraRef:
    """A `<lora:name:weight>` tag. `te_weight` is None when the text encoder uses `weight` too."""

    name: str
    weight: float = 1.0  # unet weight
    te_weight: float | None = None  # text-encoder weight when it differs from the unet weight


def _tag_number(tag: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise PromptSyntaxError(
            f"LoRA tag {tag}: weight {value.strip()!r} is not a number; write e.g. <lora:name:0.8>"
        ) from None


def _lora_ref(tag: str, args: str) -> LoraRef:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        key, sep, value = item.partition("=")
        if sep and "=" not in value:
            named[key.strip()] = value
        else:
            positional.append(item)
    name = positional[0].strip() if positional else ""
    if not name:
        raise PromptSyntaxError(f"LoRA tag {tag} names no LoRA; write <lora:name> or <lora:name:weight>")
    # Same precedence as A1111: `<lora:name:te:unet>`, named te=/unet= override, unet defaults to te.
    # `dyn=` (LyCORIS dimension cut) is accepted and ignored: diffusers has no equivalent.
    te = _tag_number(tag, positional[1]) if len(positional) > 1 else 1.0
    te = _tag_number(tag, named["te"]) if "te" in named else te
    unet = _tag_number(tag, positional[2]) if len(positional) > 2 else te
    unet = _tag_number(tag, named["unet"]) if "unet" in named else unet
    return LoraRef(name=name, weight=unet, te_weight=None if te == unet else te)


def refuse_hypernetworks(text: str) -> None:
    """PromptSyntaxError naming the first `<hypernet:...>` tag: hypernetworks are not supported, and encoding the
    tag as words would quietly change the image."""
    for match in _EXTRA_NETWORK_TAG.finditer(text):
        if match.group(1) == "hypernet":
            raise PromptSyntaxError(f"{match.group(0)}: hypernetworks are not supported; remove the tag "
                                    "(LoRA tags <lora:name:weight> are)")


def extract_loras(prompt: str) -> tuple[str, list[LoraRef]]:
    """Remove `<lora:...>` / `<lyco:...>` tags from the prompt; return the rest of the text and the tags in order.

    The tag is replaced by nothing, as A1111 does, so surrounding spaces and commas stay. Raises
    PromptSyntaxError for a tag with no name or a weight that is not a number (A1111 fails on those too).
    A `<hypernet:...>` tag raises PromptSyntaxError (refuse_hypernetworks); other kinds are left in the text.
    """
    refs: list[LoraRef] = []

    refuse_hypernetworks(prompt)

    def take(match: re.Match[str]) -> str:
        if match.group(1) not in _LORA_KINDS:
            return match.group(0)
        refs.append(_lora_ref(match.group(0), match.group(2)))
        return ""

    return _EXTRA_NETWORK_TAG.sub(take, prompt), refs


# --- attention weights -------------------------------------------------------------------------------------

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = ("BREAK", -1.0)

_ESCAPABLE = "()[]\\"
_TEXT_RUN = re.compile(r"[^\\()\[\]:]+")
_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def _scan_attention(text: str) -> tuple[list[tuple[str, float]], list[str]]:
    """Attention fragments of `text`, plus the explicit weights that are not numbers (for validate_prompt)."""
    # Entries are [text, weight, is_break]. A bracket multiplies every entry added since it opened, when it
    # closes; unclosed brackets apply at the end (round ones first), exactly as A1111 orders the products.
    entries: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []
    bad_weights: list[str] = []

    def multiply_from(start: int, factor: float) -> None:
        for entry in entries[start:]:
            if not entry[2]:  # A1111 differs: it scales BREAK too, which turns it into the word "BREAK"
                entry[1] *= factor

    def add_text(run: str) -> None:
        parts = _BREAK_WORD.split(run)
        for k, part in enumerate(parts):
            if k:
                entries.append([BREAK[0], BREAK[1], True])
            entries.append([part, 1.0, False])

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            following = text[i + 1 : i + 2]
            if following and following in _ESCAPABLE:
                entries.append([following, 1.0, False])
                i += 2
            else:  # a backslash before anything else is dropped
                entries.append(["", 1.0, False])
                i += 1
        elif c == "(":
            round_open.append(len(entries))
            i += 1
        elif c == "[":
            square_open.append(len(entries))
            i += 1
        elif c == ":":
            weight = _EXPLICIT_WEIGHT.match(text, i)
            if weight is None:
                add_text(":")
                i += 1
            elif not round_open:
                add_text(weight.group(0))
                i = weight.end()
            else:
                try:
                    value = float(weight.group(1))
                except ValueError:  # e.g. "1.2.3": A1111 crashes here; we keep the text literal
                    bad_weights.append(weight.group(1))
                    add_text(":")
                    i += 1
                else:
                    multiply_from(round_open.pop(), value)
                    i = weight.end()
        elif c == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
            i += 1
        elif c == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
            i += 1
        elif c in ")]":
            add_text(c)
            i += 1
        else:
            run = _TEXT_RUN.match(text, i)
            add_text(run.group(0))
            i = run.end()

    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    merged: list[list] = []
    for entry in entries:
        if merged and not entry[2] and not merged[-1][2] and merged[-1][1] == entry[1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    if not merged:
        merged = [["", 1.0, False]]
    return [(entry[0], entry[1]) for entry in merged], bad_weights


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split text into (fragment, weight) pairs as A1111's parse_prompt_attention does; BREAK is ("BREAK", -1.0).

    `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:w)` multiplies by w; nesting multiplies; `\\(` `\\)` `\\[`
    `\\]` `\\\\` are literal; unbalanced brackets never fail (an unclosed one applies to the rest of the prompt).
    Neighbours with equal weight are merged. Never raises.
    """
    return _scan_attention(text)[0]


# --- prompt editing and alternation ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Edit:
    """`[before:after:when]`; `before` is empty for `[after:when]`."""

    before: tuple
    after: tuple
    when: str  # the number as written; its meaning depends on the step count


@dataclass(frozen=True)
class _Alternation:
    """`[a|b|c]`: option (step - 1) % len at each step."""

    options: tuple


# lark's SIGNED_NUMBER, which is what A1111 accepts as `when`.
_WHEN = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
_PLAIN_STOP = "\\[]():|"


class _ScheduleParser:
    """Recursive descent over A1111's editing grammar.

    Inside a construct every bracket must be balanced and `:` / `|` may only appear as the construct's own
    separators; at the top level a bracket or colon that starts no valid construct is literal text. A `|`
    outside any alternation, or a backslash that escapes nothing (at the end or before a newline), makes the
    whole prompt unparseable: A1111 then uses it unscheduled. Emphasis brackets are kept as literal text;
    only editing and alternation become nodes.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        # A failed construct is retried from every enclosing bracket; remembering results keeps parsing linear.
        self._constructs: dict[int, tuple[list, int] | None] = {}

    def parse(self) -> list | None:
        text, nodes, i = self.text, [], 0
        while i < len(text):
            c = text[i]
            if c in "[(":
                construct = self._construct(i)
                if construct is not None:
                    nodes.extend(construct[0])
                    i = construct[1]
                    continue
                nodes.append(c)
                i += 1
            elif c in "]):":
                nodes.append(c)
                i += 1
            elif c == "|":
                return None
            else:
                end = self._plain_end(i)
                if end is None:
                    return None
                nodes.append(text[i:end])
                i = end
        return nodes

    def _plain_end(self, i: int) -> int | None:
        """End of the plain text at i (escapes included), or None at a backslash that escapes nothing."""
        text = self.text
        while i < len(text):
            if text[i] == "\\":
                if i + 1 >= len(text) or text[i + 1] == "\n":
                    return None
                i += 2
            elif text[i] in _PLAIN_STOP:
                break
            else:
                i += 1
        return i

    def _sequence(self, i: int) -> tuple[list, int] | None:
        """A nested prompt from i up to the next unbracketed `]`, `)`, `:` or `|` (returned as the end index)."""
        text, nodes = self.text, []
        while i < len(text):
            c = text[i]
            if c in "[(":
                construct = self._construct(i)
                if construct is None:
                    return None
                nodes.extend(construct[0])
                i = construct[1]
            elif c in "]):|":
                return nodes, i
            else:
                end = self._plain_end(i)
                if end is None:
                    return None
                nodes.append(self.text[i:end])
                i = end
        return None

    def _construct(self, i: int) -> tuple[list, int] | None:
        """The construct opening at i, as (nodes, index after it), or None if none is valid there."""
        if i not in self._constructs:
            self._constructs[i] = self._parse_construct(i)
        return self._constructs[i]

    def _parse_construct(self, i: int) -> tuple[list, int] | None:
        text = self.text
        first = self._sequence(i + 1)
        if first is None:
            return None
        inner, j = first
        if text[i] == "(":
            if text[j] == ")":
                return ["(", *inner, ")"], j + 1
            if text[j] == ":":
                second = self._sequence(j + 1)
                if second is not None and text[second[1]] == ")":
                    return ["(", *inner, ":", *second[0], ")"], second[1] + 1
            return None
        if text[j] == "]":
            return ["[", *inner, "]"], j + 1
        if text[j] == "|":
            options = [tuple(inner)]
            while text[j] == "|":
                option = self._sequence(j + 1)
                if option is None:
                    return None
                options.append(tuple(option[0]))
                j = option[1]
            return ([_Alternation(tuple(options))], j + 1) if text[j] == "]" else None
        if text[j] == ":":
            when = _WHEN.match(text, j + 1)
            if when:
                return [_Edit((), tuple(inner), when.group(1))], when.end()
            second = self._sequence(j + 1)
            if second is not None and text[second[1]] == ":":
                when = _WHEN.match(text, second[1] + 1)
                if when:
                    return [_Edit(tuple(inner), tuple(second[0]), when.group(1))], when.end()
        return None


def _when_step(when: str, steps: int) -> int:
    # A1111 1.10: a number written with "." is a fraction of the steps, otherwise a step number; capped at steps.
    value = float(when) * steps if "." in when else float(when)
    return int(max(-1.0, min(value, float(steps))))


def _boundaries(nodes, steps: int, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            when = _when_step(node.when, steps)
            if when >= 1:
                found.add(when)
            _boundaries(node.before, steps, found)
            _boundaries(node.after, steps, found)
        elif isinstance(node, _Alternation):
            found.update(range(1, steps + 1))
            for option in node.options:
                _boundaries(option, steps, found)


def _render(nodes, step: int, steps: int, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            _render(node.before if step <= _when_step(node.when, steps) else node.after, step, steps, out)
        else:
            _render(node.options[(step - 1) % len(node.options)], step, steps, out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """A1111's get_learned_conditioning_prompt_schedules for one prompt: [(end_step, text)], ends increasing.

    `[from:to:when]`, `[to:when]`, `[from::when]`: `when` written with a "." is a fraction of `steps`
    (0.25 -> a quarter), otherwise a step number. `[a|b|c]` changes every step. A text is used while the
    sampling step index (0-based) is <= its end_step; see `schedule_index`.
    """
    if steps < 1:
        raise InvalidRequest(f"steps must be at least 1 to schedule a prompt, got {steps}")
    try:
        nodes = _ScheduleParser(prompt).parse()
    except RecursionError:  # hundreds of nested brackets: use the prompt unscheduled rather than fail
        nodes = None
    if nodes is None:
        return [(steps, prompt)]
    found = {steps}
    _boundaries(nodes, steps, found)
    schedule = []
    for end in sorted(found):
        out: list[str] = []
        _render(nodes, end, steps, out)
        schedule.append((end, "".join(out)))
    return schedule


def schedule_index(end_steps: list[int], step: int) -> int:
    """Index of the schedule entry used at 0-based sampling step `step`: the first whose end_step >= step.

    This is A1111's own rule (its denoiser counts steps from 0), so `[a:b:3]` uses `a` for steps 0-3.
    """
    return min(bisect.bisect_left(end_steps, step), len(end_steps) - 1)


# --- validation --------------------------------------------------------------------------------------------


def validate_prompt(prompt: str) -> None:
    """Raise PromptSyntaxError (one line) for the few inputs A1111 itself fails on; accept everything else.

    Errors: a LoRA tag with no name or a non-numeric weight (`<lora:x:abc>`), and an explicit attention weight
    that is not a number (`(word:1.2.3)`). Unbalanced brackets, stray `|`, `[a:b:c]` with a non-numeric
    `when`, and the like are not errors: they stay literal text, as in A1111. The text is checked as written.
    """
    text, _ = extract_loras(prompt)
    bad = _scan_attention(text)[1]
    if bad:
        raise PromptSyntaxError(f"attention weight {bad[0]!r} is not a number; write e.g. (word:1.2)")
