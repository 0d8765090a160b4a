"""User-facing errors. Each carries a one-line message that names the problem and, where it can, the fix.

Front ends (CLI, UI, API) catch HuabuError and show `str(err)`; anything else is a bug and keeps its traceback.
"""


class HuabuError(Exception):
    """Base class: a problem with the user's input or environment, reported as one line."""


class InvalidRequest(HuabuError):
    """A request parameter is out of range or inconsistent (size, steps, cfg, batch, mask shape...)."""


class BadImage(HuabuError):
    """An input file is missing, unreadable, or not an image."""


class ModelNotFound(HuabuError):
    """A model, LoRA or ControlNet reference points at nothing usable."""


class UnsafeCheckpoint(HuabuError):
    """A pickle-based checkpoint was offered without the user allowing pickle loading."""


class PromptSyntaxError(HuabuError):
    """A prompt could not be parsed."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type name when it has none: how a
    library's error is quoted inside one of ours."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
