"""Native mode: the servers as local processes, with the same settings as the compose stack.

TorchServe runs from the installed package with the machine's Java; TF Serving runs through
`tensorflow_model_server` when it is on PATH (it has no PyPI or Debian package); KServe's model
server runs from the installed package, one process per framework; Triton runs from the Triton
environment (.venv-triton, numpy<2), one process per framework.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from deploybench import layout
from deploybench.files import atomic_symlink, atomic_write_text
from deploybench.serving import torchserve_models
from deploybench.settings import REPO_ROOT, ServerSettings

CONFIG_DIR = REPO_ROOT / "serving" / "config"
TORCHSERVE_CONFIG = CONFIG_DIR / "config.properties"
BATCHING_CONFIG = CONFIG_DIR / "batching.config"
MONITORING_CONFIG = CONFIG_DIR / "monitoring.config"
TORCHSERVE_METRICS = CONFIG_DIR / "torchserve-metrics.yaml"
TORCHSERVE_LOG_CONFIG = CONFIG_DIR / "torchserve-log4j2.xml"  # no lines per request
TFSERVING_ENTRYPOINT = REPO_ROOT / "docker" / "tfserving" / "entrypoint.sh"
# the Triton environment's interpreter (`make setup` makes it), or DEPLOYBENCH_TRITON_PYTHON
TRITON_PYTHON_ENV = "DEPLOYBENCH_TRITON_PYTHON"
TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"


class ServerUnavailable(Exception):
    """A server that cannot run here, with the exact reason and how to get it."""


@dataclass(frozen=True)
class NativeSetup:
    """What a target's native start gets (serving/targets.py, `Target.native`)."""

    folder: Path  # this server's own folder in the run: its configs, logs, temp files
    root: Path  # the export root
    models: list[str]
    settings: ServerSettings
    addresses: Mapping[str, str]  # the target's endpoints, by key
    overrides: dict[str, str] = field(default_factory=dict)  # server config lines (tests, drills)


def read_properties(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def torchserve_models_json(store: Path, models: list[str], settings: ServerSettings) -> str:
    """TorchServe's per-model settings for `models` (their .mar files in `store`)."""
    mars = {}
    for model in models:
        name, version = torchserve_models.mar_model(store / f"{model}.mar")
        mars[name] = (version, f"{model}.mar")
    return torchserve_models.models_json(
        mars, settings.max_batch_size if settings.batching else 1, settings.batch_timeout_ms,
        settings.workers)


def torchserve_properties(root: Path, models: list[str], settings: ServerSettings,
                          addresses: Mapping[str, str],
                          overrides: dict[str, str] | None = None) -> str:
    """The compose stack's config.properties with this machine's addresses and model store;
    `overrides` last (e.g. enable_model_api=true for a rollover test, never by default)."""
    properties = read_properties(TORCHSERVE_CONFIG)
    store = (root / layout.MODEL_STORE).resolve()
    grpc_inference = addresses["grpc_inference"].rsplit(":", 1)
    grpc_management = addresses["grpc_management"].rsplit(":", 1)
    properties.update({
        "inference_address": addresses["inference"],
        "management_address": addresses["management"],
        "metrics_address": addresses["metrics"],
        "grpc_inference_address": grpc_inference[0],
        "grpc_inference_port": grpc_inference[1],
        "grpc_management_address": grpc_management[0],
        "grpc_management_port": grpc_management[1],
        "model_store": str(store),
        "metrics_config": str(TORCHSERVE_METRICS),
        "allowed_urls": f"file://{store}/.*",
        "load_models": ",".join(f"{m}.mar" for m in models),
        "models": torchserve_models_json(store, models, settings),
    })
    properties.update(overrides or {})
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def torchserve_command(config: Path, root: Path, models: list[str]) -> list[str]:
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise ServerUnavailable(
            "java is not on PATH: TorchServe needs a Java 17 runtime "
            "(apt-get install default-jre-headless, or set JAVA_HOME)"
        )
    store = (root / layout.MODEL_STORE).resolve()
    # the launcher that `torchserve` would run, with this interpreter for the workers
    return [
        sys.executable, "-c", "from ts.model_server import start; start()",
        "--start", "--foreground", "--ncs", "--disable-token-auth",
        "--ts-config", str(config), "--model-store", str(store),
        "--log-config", str(TORCHSERVE_LOG_CONFIG),
        "--models", *[f"{m}={m}.mar" for m in models],
    ]


# A Unix socket's path holds at most 107 bytes, and TorchServe's workers listen on
# <TEMP>/.ts.sock.<port>: in a deep run folder they could not start at all ("AF_UNIX path too
# long"), and the server would never turn ready.
UNIX_SOCKET_PATH_LIMIT = 107


def socket_safe(tmp: Path) -> Path:
    """`tmp`, or where its path is too long for a socket inside it, a short link to it in the
    system's temp folder (one per folder, named by the folder: a rerun reuses it)."""
    if len(os.fsencode(tmp / ".ts.sock.65535")) <= UNIX_SOCKET_PATH_LIMIT:
        return tmp
    digest = hashlib.sha256(os.fsencode(tmp.resolve())).hexdigest()[:16]
    alias = Path(tempfile.gettempdir()) / f"deploybench-{digest}"
    atomic_symlink(str(tmp.resolve()), alias)
    return alias


def torchserve_env(run_dir: Path, settings: ServerSettings) -> dict[str, str]:
    tmp = run_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    tmp = socket_safe(tmp)
    return {
        # TorchServe keeps its pid file in the temp folder: one per instance, not one per host
        "TMPDIR": str(tmp), "TEMP": str(tmp),
        "LOG_LOCATION": str(run_dir / "logs"), "METRICS_LOCATION": str(run_dir / "logs"),
        "DEPLOYBENCH_TORCH_THREADS": str(settings.intra_op_threads),
        "OMP_NUM_THREADS": str(settings.intra_op_threads),
        **settings.process_env(),
    }


def torchserve_native(setup: NativeSetup) -> tuple[list[str], dict[str, str]]:
    """TorchServe's command and environment: the hardened config with this run's addresses."""
    config = setup.folder / "config.properties"
    atomic_write_text(config, torchserve_properties(setup.root, setup.models, setup.settings,
                                                    setup.addresses, setup.overrides))
    return (torchserve_command(config, setup.root, setup.models),
            torchserve_env(setup.folder, setup.settings))


def tfserving_native(setup: NativeSetup) -> tuple[list[str], dict[str, str]]:
    if setup.overrides:
        raise ServerUnavailable("TF Serving takes no config overrides here")
    return tfserving_command(setup.folder, setup.root, setup.models, setup.settings,
                             setup.addresses)


def tfserving_command(run_dir: Path, root: Path, models: list[str], settings: ServerSettings,
                      addresses: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The compose service's entrypoint and flags, with host paths: the same script adds the
    batching flags and renders the batching file from .env's values."""
    if shutil.which("tensorflow_model_server") is None:
        raise ServerUnavailable(
            "tensorflow_model_server is not on PATH: TF Serving has no PyPI or Debian package; "
            "run it with Docker (`docker compose up tfserving`), or install the binary from "
            "TensorFlow Serving's releases / APT repository and put it on PATH"
        )
    config = run_dir / layout.MODELS_CONFIG
    atomic_write_text(config, layout.models_config_text(models, root.resolve()))
    rest_port = urlparse(addresses["rest"]).port
    grpc_port = addresses["grpc"].rsplit(":", 1)[1]
    command = [
        "bash", str(TFSERVING_ENTRYPOINT),
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={config}",
        f"--monitoring_config_file={MONITORING_CONFIG}",
        f"--tensorflow_intra_op_parallelism={settings.intra_op_threads}",
        f"--tensorflow_inter_op_parallelism={settings.inter_op_threads}",
        f"--rest_api_num_threads={settings.rest_threads}",
    ]
    env = {
        "BATCHING": "true" if settings.batching else "false",
        "MAX_BATCH_SIZE": str(settings.max_batch_size),
        "BATCH_TIMEOUT_MS": str(settings.batch_timeout_ms),
        "BATCH_THREADS": str(settings.intra_op_threads),
        "DEPLOYBENCH_BATCHING_TEMPLATE": str(BATCHING_CONFIG),
        "DEPLOYBENCH_BATCHING_FILE": str(run_dir / "batching.config"),
        **settings.process_env(),
    }
    return command, env


def kserve_native(runtime: str) -> Callable[[NativeSetup], tuple[list[str], dict[str, str]]]:
    """KServe's model server (serving/kserve_server.py) hosting the artifacts `runtime` runs:
    the same code for every runtime, the same threads as the other servers, on the endpoints'
    host only."""

    def start(setup: NativeSetup) -> tuple[list[str], dict[str, str]]:
        if setup.overrides:
            raise ServerUnavailable("the KServe server takes no config overrides")
        rest, grpc = urlparse(setup.addresses["rest"]), setup.addresses["grpc"].rsplit(":", 1)
        if rest.hostname != grpc[0]:
            raise ServerUnavailable(f"REST ({rest.hostname}) and gRPC ({grpc[0]}) must listen "
                                    "on one host")
        command = [
            sys.executable, "-m", "deploybench.serving.kserve_server",
            "--artifacts", str(setup.root.resolve()), "--models", ",".join(setup.models),
            "--runtime", runtime, "--host", str(rest.hostname),
            "--http-port", str(rest.port), "--grpc-port", grpc[1],
            "--threads", str(setup.settings.intra_op_threads),
        ]
        env = {"OMP_NUM_THREADS": str(setup.settings.intra_op_threads),
               "TF_CPP_MIN_LOG_LEVEL": "2", **setup.settings.process_env()}
        return command, env

    return start


def triton_python() -> Path:
    """The Triton environment's interpreter, or why there is none."""
    python = Path(os.environ.get(TRITON_PYTHON_ENV) or TRITON_PYTHON)
    if not python.exists():
        raise ServerUnavailable(
            f"the Triton environment is not set up ({python} is missing): `make setup` makes "
            "it (Triton needs numpy<2, the kit's main environment numpy>=2)")
    return python


def triton_native(runtime: str) -> Callable[[NativeSetup], tuple[list[str], dict[str, str]]]:
    """Triton (serving/triton_server.py) hosting the artifacts `runtime` runs: the same code
    for every runtime, the same threads and batching settings as the other servers, every port
    on the endpoints' host only."""

    def start(setup: NativeSetup) -> tuple[list[str], dict[str, str]]:
        if setup.overrides:
            raise ServerUnavailable("the Triton server takes no config overrides")
        rest = urlparse(setup.addresses["rest"])
        grpc = setup.addresses["grpc"].rsplit(":", 1)
        metrics = urlparse(setup.addresses["metrics"])
        if not rest.hostname == grpc[0] == metrics.hostname:
            raise ServerUnavailable(f"REST ({rest.hostname}), gRPC ({grpc[0]}) and metrics "
                                    f"({metrics.hostname}) must listen on one host")
        settings = setup.settings
        command = [
            str(triton_python()), "-m", "deploybench.serving.triton_server",
            "--artifacts", str(setup.root.resolve()), "--models", ",".join(setup.models),
            "--runtime", runtime, "--host", str(rest.hostname),
            "--http-port", str(rest.port), "--grpc-port", grpc[1],
            "--metrics-port", str(metrics.port),
            "--repository", str(setup.folder.resolve() / "triton-repository"),
            "--threads", str(settings.intra_op_threads),
            "--instances", str(settings.workers),
            "--max-batch-size", str(settings.max_batch_size),
            "--batch-timeout-ms", str(settings.batch_timeout_ms),
            *(["--batching"] if settings.batching else []),
        ]
        env = {"OMP_NUM_THREADS": str(settings.intra_op_threads), "TF_CPP_MIN_LOG_LEVEL": "2",
               **settings.process_env()}
        return command, env

    return start
