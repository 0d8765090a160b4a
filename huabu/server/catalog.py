"""What the server offers (models, LoRAs, styles, memory) and the checks every HTTP request passes before it becomes
a job: models only from the registry's list, images only inside the request, sizes within the limits.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huabu.core.apps import API_APPS, AppRequest
from huabu.core.errors import InvalidRequest, ModelNotFound, UnsafeCheckpoint
from huabu.core.requests import GenerateRequest, VideoRequest
from huabu.core.settings import BUILTIN_MODEL, Settings
from huabu.engine import checkpoints
from huabu.engine.models import ModelManager, ModelRef, builtin_has_weights, bundled_configs
from huabu.server.config import Limits, ServerConfig
from huabu.server.security import NotAllowed, require_data_url


@dataclass
class Catalog:
    """The server's view of its models and defaults. `options` is A1111's /options store (any key round-trips);
    `default_model` / `default_clip_skip` are what `sd_model_checkpoint` / `CLIP_stop_at_last_layers` set."""

    settings: Settings
    models: ModelManager
    limits: Limits
    options: dict[str, Any] = field(default_factory=dict)
    default_model: str | None = None
    default_clip_skip: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- models ---------------------------------------------------------------------------------------------

    def model_refs(self) -> list[ModelRef]:
        refs = self.models.list_models()
        return [ref for ref in refs if ref.kind != "builtin" or builtin_has_weights()]

    def model_item(self, ref: ModelRef) -> dict[str, Any]:
        """A1111's /sd-models row; file names are relative to the models folder (the server's layout stays
        private)."""
        digest = self.models.model_sha256(ref)
        short = checkpoints.short_hash(digest)
        return {"title": f"{ref.name} [{short}]" if short else ref.name, "model_name": ref.name, "hash": short,
                "sha256": digest, "filename": self._public_name(ref), "config": None}

    def _public_name(self, ref: ModelRef) -> str:
        if ref.kind == "builtin":
            return BUILTIN_MODEL
        try:
            return Path(ref.location).relative_to(self.settings.models_dir).as_posix()
        except ValueError:
            return ref.name

    def resolve_model(self, spec: str | None) -> str | None:
        """The engine model spec for a name sent over HTTP: only models the registry lists (built-in or in the
        models folder), matched by name, A1111 title `name [hash]`, file name, relative path or short hash. Single
        files must be safetensors by their bytes. None = the server's current default."""
        if spec is None or not str(spec).strip():
            return self.default_model
        wanted = str(spec).strip()
        if wanted == self.default_model:  # the operator's choice, as a job read back from SQLite or a broker has it
            return wanted
        bare = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted
        for ref in self.model_refs():
            # ref.location: what this method returned for an accepted job, checked again by a worker
            names = {ref.name, self._public_name(ref), Path(ref.location).name, Path(ref.location).stem, ref.location}
            if wanted in names or bare in names or self._hash_matches(ref, wanted):
                if ref.kind == "single-file":
                    fmt = checkpoints.sniff_format(ref.location)
                    if fmt != checkpoints.SAFETENSORS:
                        raise UnsafeCheckpoint(f"model {ref.name!r} is not a safetensors file; the API loads only "
                                               f"safetensors checkpoints")
                return BUILTIN_MODEL if ref.kind == "builtin" else ref.location
        raise ModelNotFound(f"no model {wanted[:200]!r} on this server (GET /sdapi/v1/sd-models lists them)")

    def _hash_matches(self, ref: ModelRef, wanted: str) -> bool:
        text = wanted.lower()
        if not (8 <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text)):
            return False
        digest = self.models.model_sha256(ref)
        return bool(digest and digest.startswith(text))

    @property
    def current_model(self) -> str:
        """The model a request that names none runs: the one `sd_model_checkpoint` set, else the server's."""
        return self.default_model or self.settings.default_model

    def current_model_title(self) -> str:
        spec = self.current_model
        for ref in self.model_refs():
            if ref.location == spec or ref.name == spec or (ref.kind == "builtin" and spec == BUILTIN_MODEL):
                return self.model_item(ref)["title"]
        return Path(spec).name

    # --- requests from HTTP ----------------------------------------------------------------------------------

    def check_generate(self, data: dict[str, Any], kind: str = "image") -> GenerateRequest | VideoRequest | AppRequest:
        """A native job request made safe: validated, model from the registry, images only as data URLs, within
        the limits. App kinds (replace, try-on, instant-id) take AppRequest fields."""
        if kind in API_APPS:
            return self.check_app(data, kind)
        if kind == "portrait":
            raise NotAllowed("the portrait app trains on a folder of photos on this machine; run it with huabu apps "
                             "portrait or in the studio")
        if kind not in ("image", "video"):
            raise InvalidRequest(f"job kind must be one of image, video, {', '.join(API_APPS)}; got {kind!r}")
        cls = GenerateRequest if kind == "image" else VideoRequest
        request = cls.from_data(data)
        updates: dict[str, Any] = {"model": self.resolve_model(request.model)}
        if request.checkpoint_config is not None and request.checkpoint_config not in bundled_configs():
            raise NotAllowed(f"checkpoint_config must be a bundled config name ({', '.join(bundled_configs())}); "
                             f"folders are not accepted over HTTP")
        updates["init_image"] = require_data_url(request.init_image, self.limits, "init_image")
        if kind == "image":
            updates["mask"] = require_data_url(request.mask, self.limits, "mask")
        if request.controlnets:
            updates["controlnets"] = [
                unit.model_copy(update={"image": require_data_url(unit.image, self.limits, f"controlnets.{i}.image")})
                for i, unit in enumerate(request.controlnets)]
        if getattr(request, "ip_adapters", None):
            updates["ip_adapters"] = [
                unit.model_copy(update={"image": require_data_url(unit.image, self.limits, f"ip_adapters.{i}.image")})
                for i, unit in enumerate(request.ip_adapters)]
        request = request.model_copy(update=updates)
        self.check_http_request(request)
        return request

    def check_app(self, data: dict[str, Any], kind: str) -> AppRequest:
        """An app job: the app is the job's kind, images travel as data URLs, models and SAM by name only."""
        if data.get("app", kind) != kind:
            raise InvalidRequest(f"request.app {data.get('app')!r} differs from the job kind {kind!r}; leave it out")
        request = AppRequest.from_data({**data, "app": kind})
        updates: dict[str, Any] = {"model": self.resolve_model(request.model)}
        for name in ("image", "mask", "reference"):
            updates[name] = require_data_url(getattr(request, name), self.limits, name)
        for name in ("sam", "controlnet", "ip_adapter_model"):
            value = getattr(request, name)
            if value and ("/" in value or "\\" in value or value.startswith((".", "~"))):
                raise NotAllowed(f"{name} must be a name in the server's folder, not a path")
        request = request.model_copy(update=updates)
        self.check_limits(request)
        self.check_lora_names(request)
        return request

    def check_http_request(self, request: GenerateRequest | VideoRequest) -> None:
        """What every request from HTTP must satisfy on top of its own validation: limits, and models named by
        name only (the engine also takes paths, which a client must not point anywhere on the server)."""
        self.check_limits(request)
        self.check_lora_names(request)
        named = [(f"controlnets.{i}.model", unit.model) for i, unit in enumerate(request.controlnets)]
        named += [(f"ip_adapters.{i}.model", unit.model) for i, unit in enumerate(getattr(request, "ip_adapters", []))]
        named += [(name, getattr(request, name, None)) for name in ("motion_module", "sparse_control", "vae")]
        for what, value in named:
            if value and ("/" in value or "\\" in value or value.startswith((".", "~"))):
                raise NotAllowed(f"{what} must be a name in the server's folder, not a path")
        if getattr(request, "script", None) is not None:  # every run of an A1111 script, models by name only
            from huabu.engine.scripts import script_requests

            for cell in script_requests(request):
                self.resolve_model(cell.model)
                self.check_http_request(cell)

    def check_limits(self, request: GenerateRequest | VideoRequest | AppRequest) -> None:
        limits = self.limits
        for name in ("prompt", "negative_prompt"):
            length = len(getattr(request, name))
            if length > limits.max_prompt_chars:
                raise InvalidRequest(f"{name} is {length} characters; this server's limit is "
                                     f"{limits.max_prompt_chars}")
        checks = [("width", request.width, limits.max_width), ("height", request.height, limits.max_height),
                  ("steps", request.steps, limits.max_steps)]
        if isinstance(request, GenerateRequest):
            checks += [("batch_size", request.batch_size, limits.max_batch_size),
                       ("n_iter", request.n_iter, limits.max_n_iter)]
        elif isinstance(request, VideoRequest):
            checks.append(("frames", request.frames, limits.max_video_frames))
        if isinstance(request, GenerateRequest) and request.enable_hr:  # the hires fix's output, not its first pass
            checks += [("the hires fix's width", request.hr_resize_x or int((request.width or 0) * request.hr_scale),
                        limits.max_width),
                       ("the hires fix's height", request.hr_resize_y or int((request.height or 0) * request.hr_scale),
                        limits.max_height)]
        for name, value, limit in checks:
            if value is not None and value > limit:
                raise InvalidRequest(f"{name} {value} is over this server's limit of {limit}")

    # --- lists ----------------------------------------------------------------------------------------------------

    def loras(self) -> list[dict[str, Any]]:
        """A1111's /loras rows (`huabu.engine.lora_library.list_loras`), paths relative to the LoRA folder."""
        from huabu.engine.lora_library import list_loras

        rows = []
        for info in list_loras(self.settings, self.models.hashes):
            row = info.to_a1111()
            row["path"] = Path(info.path).relative_to(self.settings.loras_dir).as_posix()
            rows.append(row)
        return rows

    def check_lora_names(self, request: GenerateRequest | VideoRequest | AppRequest) -> None:
        """LoRAs named over HTTP (request fields and `<lora:...>` tags) must be files in the LoRA folder: the engine
        also takes paths, which a client must not be able to point anywhere on the server."""
        from huabu.engine.loras import find_lora
        from huabu.engine.prompts.syntax import extract_loras

        names = [spec.name for spec in getattr(request, "loras", [])]
        for text in (request.prompt, request.negative_prompt):
            names += [ref.name for ref in extract_loras(text)[1]]
        root = Path(os.path.realpath(self.settings.loras_dir))
        for name in names:
            if "/" in name or "\\" in name or name.startswith((".", "~")):
                raise NotAllowed(f"LoRA {name[:100]!r}: over HTTP a LoRA is a name in the server's LoRA folder, "
                                 f"not a path")
            if not Path(os.path.realpath(find_lora(name, self.settings.loras_dir))).is_relative_to(root):
                raise NotAllowed(f"LoRA {name[:100]!r} is not in the server's LoRA folder")

    def styles(self) -> list[dict[str, Any]]:
        """The prompt book's styles for the default model (its own merged over the shipped ones)."""
        return [{"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
                for style in self.models.prompt_book(self.default_model).styles.values()]

    def style_names(self) -> set[str]:
        return set(self.models.prompt_book(self.default_model).styles)


def memory() -> dict[str, Any]:
    """A1111's /memory: system RAM from /proc/meminfo and CUDA figures when torch sees a GPU."""
    ram: dict[str, Any] = {}
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0]) * 1024
        free = int(info.get("MemAvailable", info["MemFree"]).split()[0]) * 1024
        ram = {"free": free, "used": total - free, "total": total}
    except (OSError, KeyError, ValueError):
        ram = {"error": "system memory figures are not available on this platform"}
    cuda: dict[str, Any] = {"error": "CUDA is not available"}
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        cuda = {"system": {"free": free, "used": total - free, "total": total},
                "active": {"current": stats.get("active_bytes.all.current", 0),
                           "peak": stats.get("active_bytes.all.peak", 0)},
                "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                              "peak": stats.get("allocated_bytes.all.peak", 0)},
                "reserved": {"current": stats.get("reserved_bytes.all.current", 0),
                             "peak": stats.get("reserved_bytes.all.peak", 0)}}
    return {"ram": ram, "cuda": cuda}


def cmd_flags(config: ServerConfig, settings: Settings) -> dict[str, Any]:
    """The command-line state A1111 clients read from /cmd-flags, never the credentials: whether auth is on,
    not its values."""
    return {"listen": not config.is_loopback, "port": config.port, "api": True, "nowebui": True,
            "api_auth_enabled": config.requires_auth, "device": settings.device, "precision": settings.dtype,
            "workers": config.workers, "distributed": bool(config.broker_url),
            "callback_allow": list(config.callback_allow),
            # A1111's nearest flags to huabu's offload modes; then huabu's own switches by their CLI names
            "medvram": settings.offload == "model", "lowvram": settings.offload == "sequential",
            "offload": settings.offload, "vae_tiling": settings.vae_tiling,
            "attention_slicing": settings.attention_slicing, "compile": settings.compile}


def memory_options(settings: Settings) -> dict[str, Any]:
    """The memory switches as /options keys (A1111 has none for them, so they carry a `huabu_` prefix). They are set
    by `huabu serve` flags once per loaded pipeline, so they read back but do not change over HTTP."""
    return {"huabu_offload": settings.offload, "huabu_vae_tiling": settings.vae_tiling,
            "huabu_attention_slicing": settings.attention_slicing, "huabu_dtype": settings.dtype,
            "huabu_compile": settings.compile}
