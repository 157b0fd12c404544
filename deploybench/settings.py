"""Server settings that must be equal for both servers, read from the repo's `.env`.

docker compose reads the same file, so native and docker mode get the same limits; the
process environment overrides the file, as it does for compose.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = REPO_ROOT / ".env"


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().strip("'\"")
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

    settings = ServerSettings(
        cpus=float(get("SERVER_CPUS", "2")),
        memory=get("SERVER_MEMORY", "4g"),
        intra_op_threads=int(get("SERVER_INTRA_OP_THREADS", "2")),
        inter_op_threads=int(get("SERVER_INTER_OP_THREADS", "1")),
        rest_threads=int(get("SERVER_REST_THREADS", "32")),
        batching=get("BATCHING", "false").lower() in ("1", "true", "yes", "on"),
        max_batch_size=int(get("MAX_BATCH_SIZE", "8")),
        batch_timeout_ms=int(get("BATCH_TIMEOUT_MS", "5")),
        malloc_mmap_threshold=get("MALLOC_MMAP_THRESHOLD_", ""),
        malloc_trim_threshold=get("MALLOC_TRIM_THRESHOLD_", ""),
    )
    return ServerSettings(**{**settings.to_dict(), **overrides})
