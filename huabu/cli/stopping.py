"""Ctrl-C for the training commands: the first one asks the training loop to stop after the current step (it writes
a checkpoint that the same command resumes from); a second one interrupts at once."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stop_on_ctrl_c() -> Iterator[threading.Event]:
    """An event that the first Ctrl-C inside the block sets; pass its `is_set` to the loop as `cancel`."""
    from tqdm import tqdm

    stop = threading.Event()

    def ask_to_stop(signum, frame) -> None:
        tqdm.write("stopping after this step (Ctrl-C again to abort)", file=sys.stderr)
        stop.set()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
