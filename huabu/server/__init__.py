"""The HTTP API, a face (top layer, beside huabu.ui): A1111-compatible `/sdapi/v1/*` (a1111.py), the native jobs
API (native.py), auth and limits (security.py, catalog.py).

Every generation is a job persisted in SQLite (jobs.py) and run by a queue backend (queue.py: `LocalQueue`, engine
threads in this process; distributed.py: `CeleryQueue`, Celery workers over Redis), which calls `Engine.generate`
or `Engine.generate_video` only through runner.run_job. `create_app` (app.py) assembles the routes. The package
itself imports no web framework (the CLI registers `huabu serve` from it, also where the `server` extra is not
installed); `create_app` loads FastAPI when first asked for.
"""

from typing import Any

from huabu.server.config import Limits, ServerConfig

__all__ = ["Limits", "ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from huabu.server.app import create_app

        return create_app
    raise AttributeError(f"module 'huabu.server' has no attribute {name!r}")
