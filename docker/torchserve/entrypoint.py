"""Start TorchServe in the official pytorch/torchserve image, or check that it is ready.

    python entrypoint.py [TORCHSERVE ARGS...]   start TorchServe in the foreground
    python entrypoint.py health                 exit 0 only when every model's worker is READY

Start: reads the .mar files in the model store and .env's batch settings (BATCHING,
MAX_BATCH_SIZE, BATCH_TIMEOUT_MS, passed in by docker-compose.yml), writes TorchServe's
per-model `models` JSON into DEPLOYBENCH_TS_MODELS (config.properties reads it as
$$DEPLOYBENCH_TS_MODELS$$), then runs `torchserve --foreground` and stops it cleanly on SIGTERM.

Health: TorchServe's /ping answers Healthy before any worker is up, so readiness is asked of
the management API instead: every model in the store must be registered with a READY worker.

The image runs Python 3.9 and has no curl: this file uses the standard library only and
3.9-compatible syntax.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

try:  # the models setting, built as native mode builds it (serving/torchserve_models.py)
    from deploybench.serving.torchserve_models import MarError, mar_model, models_json
except ImportError:  # the image: no deploybench, the file mounted on PYTHONPATH
    from torchserve_models import MarError, mar_model, models_json

CONFIG = os.environ.get("DEPLOYBENCH_TS_CONFIG", "/deploybench/config/config.properties")
# no log lines per request (serving/config/torchserve-log4j2.xml says why)
LOG_CONFIG = os.environ.get("DEPLOYBENCH_TS_LOG_CONFIG",
                            "/deploybench/config/torchserve-log4j2.xml")
MODEL_STORE = Path(os.environ.get("DEPLOYBENCH_MODEL_STORE", "/models/model-store"))
MANAGEMENT = os.environ.get("DEPLOYBENCH_TS_MANAGEMENT", "http://127.0.0.1:8081")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class SetupError(Exception):
    """A problem the operator must fix; printed as one line."""


def positive_int(name: str, default: str) -> int:
    value = os.environ.get(name, default).strip()
    if not value.isdigit() or int(value) < 1:
        raise SetupError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def batch_settings() -> tuple[int, int]:
    """(batchSize, maxBatchDelay in ms) for every model, from .env's settings."""
    batching = os.environ.get("BATCHING", "false").strip().lower()
    if batching not in TRUE + FALSE:
        raise SetupError(f"BATCHING must be true or false, got {batching!r}")
    delay = os.environ.get("BATCH_TIMEOUT_MS", "5").strip()
    if not delay.isdigit():
        raise SetupError(f"BATCH_TIMEOUT_MS must be whole milliseconds, got {delay!r}")
    if batching in FALSE:
        return 1, int(delay)
    return positive_int("MAX_BATCH_SIZE", "8"), int(delay)


def store_models(store: Path) -> dict[str, tuple[str, str]]:
    """{model name: (version, .mar file name)} for every .mar in the model store."""
    if not store.is_dir():
        raise SetupError(
            f"{store} not found: export the models first (deploybench export --model all "
            "--out DIR) and point DEPLOYBENCH_ARTIFACTS (.env) at DIR"
        )
    models = {}
    for mar in sorted(store.glob("*.mar")):
        try:
            name, version = mar_model(mar)
        except MarError as error:
            raise SetupError(str(error)) from error
        models[name] = (version, mar.name)
    if not models:
        raise SetupError(f"no .mar in {store}: export the models first")
    return models


def start(extra: list[str]) -> int:
    models = store_models(MODEL_STORE)
    batch_size, delay_ms = batch_settings()
    workers = positive_int("SERVER_WORKERS", "1")
    env = dict(os.environ,
               DEPLOYBENCH_TS_MODELS=models_json(models, batch_size, delay_ms, workers))
    mode = f"batchSize {batch_size}, maxBatchDelay {delay_ms} ms" if batch_size > 1 else "off"
    print(f"torchserve: models {', '.join(models)}; {workers} worker(s) each; batching {mode}",
          flush=True)
    command = [
        "torchserve", "--foreground", "--ncs",
        "--ts-config", CONFIG, "--log-config", LOG_CONFIG, "--model-store", str(MODEL_STORE),
        *extra,
    ]
    server = subprocess.Popen(command, env=env)

    def stop(signum: int, frame: object) -> None:
        # `torchserve --stop` ends the Java frontend, which ends its Python workers.
        subprocess.run(["torchserve", "--stop"], env=env, check=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return server.wait()


def get_json(path: str) -> object:
    with urllib.request.urlopen(MANAGEMENT + path, timeout=5) as reply:
        return json.load(reply)


def health() -> int:
    try:
        expected = sorted(store_models(MODEL_STORE))
        registered = {m["modelName"] for m in get_json("/models?limit=1000")["models"]}
        missing = [name for name in expected if name not in registered]
        if missing:
            print(f"unhealthy: not registered: {', '.join(missing)}")
            return 1
        for name in expected:
            workers = [w for v in get_json(f"/models/{name}") for w in v.get("workers", [])]
            states = sorted({w.get("status", "?") for w in workers})
            if not workers or states != ["READY"]:
                print(f"unhealthy: {name}: workers {states or 'none'}")
                return 1
    except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError) as error:
        print(f"unhealthy: management API {MANAGEMENT}: {error}")
        return 1
    except SetupError as error:
        print(f"unhealthy: {error}")
        return 1
    print(f"healthy: READY: {', '.join(expected)}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["health"]:
        return health()
    try:
        return start(argv)
    except SetupError as error:
        print(f"torchserve: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
