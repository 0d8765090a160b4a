"""A1111 1.10 prompt syntax: attention weights, editing/alternation schedules, LoRA tags, validation.

Expected values are A1111's own (its doctests and its parser's output on the same text) unless marked.
"""

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from huabu.core.errors import InvalidRequest, PromptSyntaxError
from huabu.engine.prompts.syntax import (
    LoraRef,
    extract_loras,
    parse_attention,
    prompt_schedule,
    schedule_index,
    validate_prompt,
)

B = ("BREAK", -1.0)

ATTENTION_CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("", [("", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("((word))", [("word", 1.1 * 1.1)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
    ("(word:1.5)", [("word", 1.5)]),
    ("( word : 0.5 )", [(" word ", 0.5)]),
    ("(a [b] c:1.5)", [("a ", 1.5), ("b", 1 / 1.1 * 1.5), (" c", 1.5)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    # unbalanced brackets: an unclosed one weighs the rest; a stray closer is text
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("x [y", [("x ", 1.0), ("y", 1 / 1.1)]),
    ("unbalanced)", [("unbalanced)", 1.0)]),
    ("[a (b]", [("a ", 1 / 1.1), ("b", 1 / 1.1 * 1.1)]),
    ("a:1.5) b", [("a:1.5) b", 1.0)]),
    # escapes; a backslash before anything else is dropped
    (r"\(literal\]", [("(literal]", 1.0)]),
    (r"(\(x\))", [("(x)", 1.1)]),
    (r"a \\ b", [("a \\ b", 1.0)]),
    (r"a\b", [("ab", 1.0)]),
    # BREAK: uppercase, as its own word
    ("a BREAK b", [("a", 1.0), B, ("b", 1.0)]),
    ("BREAK", [("", 1.0), B, ("", 1.0)]),
    ("aBREAK b, a break b", [("aBREAK b, a break b", 1.0)]),
    ("(a:1.2) BREAK, b", [("a", 1.2), ("", 1.0), B, (", b", 1.0)]),
    # A1111 differs: it multiplies the BREAK marker too, which makes it the literal word "BREAK" weighted -1.1
    ("(a BREAK b)", [("a", 1.1), B, ("b", 1.1)]),
    # a weight that is not a number stays text (A1111 raises ValueError; validate_prompt reports it)
    ("(word:1.2.3)", [("word:1.2.3", 1.1)]),
]


@pytest.mark.parametrize(("text", "expected"), ATTENTION_CASES)
def test_parse_attention_matches_a1111(text, expected):
    assert parse_attention(text) == expected


SCHEDULE_CASES = [
    # A1111's own doctests (10 steps)
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 4, [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)")]),
    ("[fe|]male", 4, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
    ("[fe|||]male", 5, [(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female")]),
    # `when` as a step number or, written with a ".", a fraction of the steps (1.10: capped at steps)
    ("[a:b:5]", 6, [(5, "a"), (6, "b")]),
    ("[a:b:0.25]", 20, [(5, "a"), (20, "b")]),
    ("[a:b:0.25]", 6, [(1, "a"), (6, "b")]),
    ("[a:b:5.0]", 6, [(6, "a")]),
    ("[a:b:0]", 6, [(6, "b")]),
    ("[a::2] [:b:3]", 6, [(2, "a "), (3, " "), (6, " b")]),
    ("(x [a:b:2])", 6, [(2, "(x a)"), (6, "(x b)")]),
    # nesting editing and alternation
    ("[[a|b]:c:3]", 6, [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "c"), (6, "c")]),
    ("[a:[b|c]:0.5]", 6, [(1, "a"), (2, "a"), (3, "a"), (4, "c"), (5, "b"), (6, "c")]),
    # not editing: the text stays literal; a stray `|` leaves the whole prompt unscheduled
    ("[a:b:x]", 6, [(6, "[a:b:x]")]),
    ("[a|b:3]", 6, [(6, "[a|b:3]")]),
    ("a|b [c:3]", 6, [(6, "a|b [c:3]")]),
    ("[c:3] \\", 6, [(6, "[c:3] \\")]),
]


@pytest.mark.parametrize(("prompt", "steps", "expected"), SCHEDULE_CASES)
def test_prompt_schedule_matches_a1111(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_schedule_index_follows_a1111_zero_based_step_rule():
    ends = [e for e, _ in prompt_schedule("[a:b:3]", 10)]
    assert [schedule_index(ends, s) for s in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    ends = [e for e, _ in prompt_schedule("[a|b]", 6)]
    assert [schedule_index(ends, s) % 2 for s in range(6)] == [0, 0, 1, 0, 1, 0]
    assert schedule_index(ends, 99) == len(ends) - 1


def test_prompt_schedule_rejects_zero_steps():
    with pytest.raises(InvalidRequest, match="steps"):
        prompt_schedule("a", 0)


LORA_CASES = [
    ("a <lora:foo:0.8> cat", "a  cat", [LoraRef("foo", 0.8)]),
    ("<lora:foo>", "", [LoraRef("foo", 1.0)]),
    ("x, <lora:foo:1:0.5>", "x, ", [LoraRef("foo", weight=0.5, te_weight=1.0)]),
    ("<lora:foo:te=0.2:unet=0.7>", "", [LoraRef("foo", weight=0.7, te_weight=0.2)]),
    ("<lora:foo:te=0.4>", "", [LoraRef("foo", 0.4)]),
    ("<lora:foo:0.6:dyn=8>", "", [LoraRef("foo", 0.6)]),
    ("<lyco:bar:-0.3>a", "a", [LoraRef("bar", -0.3)]),
    ("<lora:my style v2:1.2>", "", [LoraRef("my style v2", 1.2)]),
    ("[<lora:a:1>:<lora:b:0.5>:3] z", "[::3] z", [LoraRef("a", 1.0), LoraRef("b", 0.5)]),
    ("keep <other:x:1> and <3", "keep <other:x:1> and <3", []),
]


@pytest.mark.parametrize(("prompt", "text", "loras"), LORA_CASES)
def test_extract_loras(prompt, text, loras):
    assert extract_loras(prompt) == (text, loras)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("<lora:foo:abc>", "'abc' is not a number"),
        ("<lora: :1>", "names no LoRA"),
        ("a (word:1.2.3)", "'1.2.3' is not a number"),
        ("(x:..)", "'..' is not a number"),
        ("a <hypernet:anime:0.7> cat", "<hypernet:anime:0.7>: hypernetworks are not supported"),
    ],
)
def test_validate_prompt_rejects_what_a1111_fails_on(prompt, message):
    with pytest.raises(PromptSyntaxError, match=message) as err:
        validate_prompt(prompt)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "prompt", ["", "((unbalanced [a|b", "[a:b:c]", "a|b", "x:1.2.3) y", r"trailing \ ", "<lora:x:1> (a:1.5)"]
)
def test_validate_prompt_accepts_everything_a1111_accepts(prompt):
    validate_prompt(prompt)


# pieces that make A1111 syntax likely: brackets, separators, numbers, escapes, BREAK, tags
SPECIAL = st.lists(
    st.sampled_from(list("ab ()[]{}:|\\,.0123-+e\n") + ["BREAK", "<lora:x:1>", "<lora:y>"]), max_size=40
).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=40), SPECIAL)


@given(ANY_TEXT)
def test_parse_attention_never_raises(text):
    fragments = parse_attention(text)
    assert fragments and all(isinstance(t, str) and isinstance(w, float) for t, w in fragments)


@given(ANY_TEXT, st.integers(1, 40))
def test_schedule_always_ends_at_steps_and_increases(prompt, steps):
    schedule = prompt_schedule(prompt, steps)
    ends = [end for end, _ in schedule]
    assert ends[-1] == steps
    assert all(1 <= a < b for a, b in zip(ends, ends[1:]))


@settings(max_examples=60)
@given(ANY_TEXT)
def test_validate_and_extract_never_fail_unexpectedly(prompt):
    for check in (validate_prompt, extract_loras):
        try:
            check(prompt)
        except PromptSyntaxError as err:
            assert "\n" not in str(err)


PLAIN = st.text(alphabet=st.characters(exclude_characters="()[]\\:|<"), max_size=40)


@given(PLAIN, st.integers(1, 30))
def test_plain_text_comes_back_unchanged(text, steps):
    assume("BREAK" not in text)
    assert parse_attention(text) == [(text, 1.0)]
    assert prompt_schedule(text, steps) == [(steps, text)]
    assert extract_loras(text) == (text, [])
