"""The prompt book (咒语书): prompt parts and style templates as editable zh/en data."""

from huabu.engine.prompts.book.loader import (
    PromptBook,
    PromptBookError,
    PromptPart,
    Style,
    add_part,
    apply_styles,
    load_book,
)

__all__ = ["PromptBook", "PromptBookError", "PromptPart", "Style", "add_part", "apply_styles", "load_book"]
