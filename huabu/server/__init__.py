"""huabu's HTTP API: A1111-compatible `/sdapi/v1/*`, the native jobs API, auth and limits.

A thin layer: every generation is a job in SQLite (`jobs.py`) run by a backend (`local.py`: engine threads in this
process; `distributed.py`: Celery workers over Redis) through `Engine.generate`. `create_app` assembles the routes.
"""

from huabu.server.app import create_app
from huabu.server.config import Limits, ServerConfig

__all__ = ["Limits", "ServerConfig", "create_app"]
