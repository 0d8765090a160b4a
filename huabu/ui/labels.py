"""Language-dependent component text: build components in one language, relabel them all on a switch.

Gradio's own I18n follows the browser's locale; the studio instead switches from a toggle on the page, so it keeps
a list of (component, how to label it in a language) and answers the toggle with one update per component. Only
labels change, so prompts, images and every other value on the page stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from huabu.ui.i18n import LANGUAGES, Key, check_language, load_texts

Relabel = Callable[[str], dict[str, Any]]


class Labels:
    """Creates components whose text arguments may be Keys and remembers how to relabel them."""

    def __init__(self, language: str) -> None:
        self.language = check_language(language)
        self.texts = {lang: load_texts(lang) for lang in LANGUAGES}
        self._entries: list[tuple[Any, Relabel]] = []

    def text(self, key: str, language: str | None = None, **fields: Any) -> str:
        """The text of `key` in `language` (default: the initial language), with `{fields}` filled in."""
        text = self.texts[language or self.language][key]
        return text.format(**fields) if fields else text

    def __call__(self, cls: Callable[..., Any], **kwargs: Any) -> Any:
        """`cls(**kwargs)` with every Key argument (and Key labels in `choices` pairs) translated; registered for
        relabelling."""
        keyed = {name: value for name, value in kwargs.items() if isinstance(value, Key)}
        choices = kwargs.get("choices")
        keyed_choices = isinstance(choices, (list, tuple)) and any(
            isinstance(c, tuple) and isinstance(c[0], Key) for c in choices)

        def relabel(language: str) -> dict[str, Any]:
            update = {name: self.text(key, language) for name, key in keyed.items()}
            if keyed_choices:
                update["choices"] = [(self.text(c[0], language), c[1]) if isinstance(c, tuple) and isinstance(
                    c[0], Key) else c for c in choices]
            return update

        component = cls(**{**kwargs, **relabel(self.language)})
        if keyed or keyed_choices:
            self._entries.append((component, relabel))
        return component

    def register(self, component: Any, relabel: Relabel) -> Any:
        """Relabel `component` with `relabel(language)` -> update fields (for text that is not in the tables, such
        as prompt-book labels)."""
        self._entries.append((component, relabel))
        return component

    @property
    def components(self) -> list[Any]:
        return [component for component, _ in self._entries]

    def updates(self, language: str) -> list[dict[str, Any]]:
        """One gradio update per registered component, in `components` order."""
        import gradio as gr

        check_language(language)
        return [gr.update(**relabel(language)) for _, relabel in self._entries]
