"""How the server runs: where it binds, who may call it, and the limits on what one request may ask for."""

from __future__ import annotations

from dataclasses import dataclass, field

from huabu.core.errors import InvalidRequest
from huabu.core.hosts import is_loopback_bind

LOOPBACK = "127.0.0.1"
ANY_ADDRESS = "0.0.0.0"


@dataclass(frozen=True)
class Limits:
    """Caps on one request, so a single call cannot exhaust the machine. Each breach is a one-line 4xx error."""

    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_n_iter: int = 16
    max_body_bytes: int = 32 * 1024 * 1024
    max_json_items: int = 50_000  # values in one JSON body: bounds what parsing and validating it cost
    max_image_bytes: int = 24 * 1024 * 1024  # one decoded base64 image
    max_image_pixels: int = 16 * 1024 * 1024  # width x height of one input image
    max_video_frames: int = 256
    max_prompt_chars: int = 20_000  # prompt and negative prompt each; megabytes would tokenise for minutes


@dataclass(frozen=True)
class ServerConfig:
    host: str = LOOPBACK
    port: int = 7861
    api_key: str | None = field(default=None, repr=False)
    api_auth: str | None = field(default=None, repr=False)  # "user:pass" or "u1:p1,u2:p2", as A1111's --api-auth
    limits: Limits = field(default_factory=Limits)
    callback_allow: tuple[str, ...] = ()  # host names completion callbacks may go to
    workers: int = 1  # local engine threads (each owns an Engine)
    broker_url: str | None = None  # Redis URL: run jobs on Celery workers instead of local threads
    max_attempts: int = 2  # a job interrupted by a server stop this many times is failed, not retried again
    keep_jobs_days: float = 7.0  # finished jobs older than this are deleted from jobs.sqlite; 0 keeps them all
    max_output_gb: float | None = None  # jobs that save are refused once the outputs folder holds this much

    def __post_init__(self) -> None:
        if self.api_auth is not None:
            for pair in self.api_auth.split(","):
                user, sep, password = pair.partition(":")
                if not sep or not user or not password:
                    raise InvalidRequest("--api-auth must look like user:password (several: u1:p1,u2:p2)")
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidRequest("--api-key must not be empty")
        if not self.is_loopback and not self.requires_auth:
            raise InvalidRequest(f"refusing to listen on {self.host} without authentication: pass --api-key KEY "
                                 f"or --api-auth user:password (or bind 127.0.0.1)")
        if self.keep_jobs_days < 0:
            raise InvalidRequest(f"--keep-jobs-days must be 0 (keep all) or more, got {self.keep_jobs_days}")
        if self.max_output_gb is not None and self.max_output_gb <= 0:
            raise InvalidRequest(f"--max-output-gb must be more than 0, got {self.max_output_gb}")
        if self.workers < 1:
            raise InvalidRequest(f"--workers must be at least 1, got {self.workers}")

    @property
    def requires_auth(self) -> bool:
        return bool(self.api_key or self.api_auth)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_bind(self.host)

    def credentials(self) -> list[tuple[str, str]]:
        if not self.api_auth:
            return []
        return [tuple(pair.split(":", 1)) for pair in self.api_auth.split(",")]  # type: ignore[misc]
