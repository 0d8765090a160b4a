"""What long work needs in the studio: one interrupt flag per browser session, engine progress shown as gradio
progress, and errors turned into one readable line in the page."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from huabu.core.errors import HuabuError
from huabu.engine.job import Progress

log = logging.getLogger(__name__)


class Interrupts:
    """Interrupt flags keyed by gradio session: the Interrupt button of one browser stops that browser's job only."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A fresh flag for the job `session` is starting."""
        event = threading.Event()
        with self._lock:
            self._events[session] = event
        return event

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]

    def interrupt(self, session: str) -> bool:
        """Ask the session's running job to stop; False when it has none."""
        with self._lock:
            event = self._events.get(session)
        if event is None:
            return False
        event.set()
        return True


def progress_reporter(progress: Callable[..., None], step_text: str) -> Callable[[Progress], None]:
    """An engine progress callback that moves a gr.Progress bar. `step_text` is a format string with {first},
    {last}, {total}, {step} and {steps}."""

    def report(p: Progress) -> None:
        first, last = p.first_image + 1, p.first_image + p.batch_size
        progress((p.step, p.steps), desc=step_text.format(first=first, last=last, total=p.total_images, step=p.step,
                                                          steps=p.steps), unit="steps")

    return report


@contextmanager
def readable_errors(texts: dict[str, str]) -> Iterator[None]:
    """Turn failures into a one-line gr.Error shown in the page: a HuabuError says what was wrong; anything else is
    a bug, shown as a generic line while its traceback goes to the log."""
    import gradio as gr

    try:
        yield
    except gr.Error:
        raise
    except HuabuError as err:
        raise gr.Error(str(err), title=texts["error.title"], print_exception=False) from None
    except Exception:
        log.exception("studio: unexpected error")
        raise gr.Error(texts["error.generic"], title=texts["error.title"], print_exception=False) from None
