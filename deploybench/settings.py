"""Server settings that must be equal for both servers, read from the repo's `.env`.

docker compose reads the same file, so native and docker mode get the same limits; the
process environment overrides the file, as it does for compose.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from dotenv.parser import parse_stream

from deploybench.errors import UsageError

N = TypeVar("N", int, float)

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = REPO_ROOT / ".env"


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=value pairs of a .env file as python-dotenv parses them (quotes, comments,
    `export KEY=...`), taken literally: no ${VAR} interpolation. No file: no values.

    python-dotenv itself only logs a line it cannot parse and goes on; a setting silently
    dropped would give the servers different limits, so such a line is an error here."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    with path.open(encoding="utf-8") as stream:
        for binding in parse_stream(stream):
            if binding.error:
                line = binding.original.string.strip()
                raise UsageError(f"{path}, line {binding.original.line}: cannot parse {line!r} "
                                 "(expected KEY=value)")
            if binding.key is not None and binding.value is not None:  # `KEY` alone: no value
                values[binding.key] = binding.value
    return values


@dataclass(frozen=True)
class ServerSettings:
    cpus: float
    memory: str
    intra_op_threads: int
    inter_op_threads: int
    rest_threads: int  # TF Serving's --rest_api_num_threads (.env says why)
    batching: bool
    max_batch_size: int
    batch_timeout_ms: int
    # model instances per server: TorchServe's workers per model, Triton's instance count
    # (one process or thread each, with its own copy of the model)
    workers: int
    malloc_mmap_threshold: str  # glibc allocator settings of both servers' processes (.env)
    malloc_trim_threshold: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def process_env(self) -> dict[str, str]:
        """Environment every server process (and the in-process ceiling) gets from .env."""
        values = {"MALLOC_MMAP_THRESHOLD_": self.malloc_mmap_threshold,
                  "MALLOC_TRIM_THRESHOLD_": self.malloc_trim_threshold}
        return {key: value for key, value in values.items() if value}


def load_settings(env_file: Path = ENV_FILE, **overrides: Any) -> ServerSettings:
    values = {**read_env_file(env_file), **os.environ}

    def get(key: str, default: str) -> str:
        return values.get(key, default)

    def number(key: str, default: str, kind: Callable[[str], N]) -> N:
        text = get(key, default)
        try:
            return kind(text)
        except ValueError:
            source = "the environment" if key in os.environ else str(env_file)
            raise UsageError(f"{key}={text!r} (from {source}): expected "
                             f"{'an integer' if kind is int else 'a number'}") from None

    settings = ServerSettings(
        cpus=number("SERVER_CPUS", "2", float),
        memory=get("SERVER_MEMORY", "4g"),
        intra_op_threads=number("SERVER_INTRA_OP_THREADS", "2", int),
        inter_op_threads=number("SERVER_INTER_OP_THREADS", "1", int),
        rest_threads=number("SERVER_REST_THREADS", "32", int),
        batching=get("BATCHING", "false").lower() in ("1", "true", "yes", "on"),
        max_batch_size=number("MAX_BATCH_SIZE", "8", int),
        batch_timeout_ms=number("BATCH_TIMEOUT_MS", "5", int),
        workers=number("SERVER_WORKERS", "1", int),
        malloc_mmap_threshold=get("MALLOC_MMAP_THRESHOLD_", ""),
        malloc_trim_threshold=get("MALLOC_TRIM_THRESHOLD_", ""),
    )
    return ServerSettings(**{**settings.to_dict(), **overrides})
