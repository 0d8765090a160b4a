"""The libraries' chatter, kept out of the terminal by every process that runs models (the CLI, the server's engine
children)."""

from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    """Keep library chatter (deprecation notices, loading bars, torchvision hints) out of the terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # --compile: dynamo notes each lru_cache-wrapped diffusers helper it traces through (harmless version checks)
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
