"""huabu's HTTP API: A1111-compatible `/sdapi/v1/*`, the native jobs API, auth and limits.

A thin layer: every generation is a job in SQLite (`jobs.py`) run by a backend (`local.py`: engine threads in this
process; `distributed.py`: Celery workers over Redis) through `Engine.generate`. `create_app` assembles the routes.
The package itself imports no web framework (the CLI registers `huabu serve` from it, also where the `server`
extra is not installed); `create_app` loads FastAPI when first asked for.
"""

from typing import Any

from huabu.server.config import Limits, ServerConfig

__all__ = ["Limits", "ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from huabu.server.app import create_app

        return create_app
    raise AttributeError(f"module 'huabu.server' has no attribute {name!r}")
