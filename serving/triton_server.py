"""NVIDIA Triton Inference Server hosting the kit's models in one runtime, the same code for
every runtime (serving/triton_model.py), as kserve_server.py does for KServe.

    .venv-triton/bin/python -m deploybench.serving.triton_server --artifacts ROOT \\
        --models digits-mlp --runtime pytorch --host 127.0.0.1 --http-port 8000 \\
        --grpc-port 8001 --metrics-port 8002 --repository DIR --threads 1 [--batching ...]

Triton comes from PyPI's nvidia-pytriton (tritonserver and its Python backend, CPU only), which
needs numpy<2 while the kit's main environment needs numpy>=2 (executorch): this module runs
in an environment of its own (`make setup` makes it, .venv-triton) and imports nothing of the
kit that pulls executorch. It writes a model repository (config.pbtxt and a model.py per
model), starts tritonserver as its child and stays its parent: on SIGTERM or SIGINT it stops
Triton, and whichever way Triton ends it removes Triton's shared-memory segments before it
exits. Triton gets SIGTERM if this process dies (PR_SET_PDEATHSIG), so a SIGKILL here leaves
nothing running either.

What the kit sets, and why:
- every port (HTTP, gRPC, metrics) on --host only: Triton binds every interface by default;
- no model control (`--model-control-mode=none`): the repository API cannot load or unload;
- the admin APIs (model repository, statistics, trace, logging) restricted behind a random key
  made at each start and kept nowhere (not even in a file): nothing of the admin surface is
  reachable. The key shows on tritonserver's command line to users of this host who can read
  it (as PyTriton's does); without model control, it still cannot change what is served;
- dynamic batching from .env (BATCHING, MAX_BATCH_SIZE, BATCH_TIMEOUT_MS) like the other
  servers; each request may carry up to the model's max_rows rows (Triton's max_batch_size);
- latency summaries on /metrics (`summary_latencies=true`) beside Triton's counters.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from deploybench.serving import hosting

DATATYPES = {"float32": "TYPE_FP32", "int32": "TYPE_INT32"}
STOP_TIMEOUT_S = 15
EXIT_TIMEOUT_S = 5  # how long Triton waits for requests in flight when told to stop
SHM_PREFIX = "deploybench_triton"
SHM_DIR = Path("/dev/shm")
# the admin surface: every API that is not inference, health or metadata
RESTRICTED_APIS = "model-repository,statistics,trace,logging"
MODEL_PY = '''"""Written by deploybench (serving/triton_server.py): the kit's model for Triton's
Python backend, serving/triton_model.py."""
from deploybench.serving.triton_model import TritonPythonModel  # noqa: F401
'''


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deploybench.serving.triton_server")
    parser.add_argument("--artifacts", type=Path, required=True, help="export root")
    parser.add_argument("--models", required=True,
                        help="comma-separated exported models, or all: every one exported")
    parser.add_argument("--runtime", choices=("tensorflow", "pytorch"))
    parser.add_argument("--health", action="store_true",
                        help="exit 0 when every model is ready on the V2 model-ready endpoint of "
                             "the server at --http-port (a container's healthcheck), else 1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--repository", type=Path, help="where to write the model repository")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--instances", type=int, default=1,
                        help="model instances (each its own backend process)")
    parser.add_argument("--batching", action="store_true", help="Triton's dynamic batcher")
    parser.add_argument("--max-batch-size", type=int, default=8,
                        help="the batch the dynamic batcher aims for (preferred size)")
    parser.add_argument("--batch-timeout-ms", type=int, default=5,
                        help="how long a request may wait for others to join its batch")
    return parser.parse_args(argv)


# --- the model repository ---------------------------------------------------------------------


def _dims(spec: dict[str, Any]) -> str:
    return ", ".join("-1" if axis in spec["dynamic"] else str(size)
                     for axis, size in enumerate(spec["shape"]))


def model_config(name: str, signature: dict[str, Any], output_shape: list[int],
                 parameters: dict[str, str], batching: bool, preferred_batch: int,
                 queue_delay_ms: int, instances: int = 1) -> str:
    """config.pbtxt for one model on the Python backend: its inputs and output as the
    manifest declares them (a dynamic axis is -1), `instances` CPU instances, the kit's
    parameters, and the dynamic batcher when batching is on."""
    from deploybench.serving.input_validation import inputs_of

    lines = [f'name: "{name}"', 'backend: "python"',
             f"max_batch_size: {signature['max_rows']}", "input ["]
    lines += [",\n".join(
        f'  {{ name: "{spec["name"]}" data_type: {DATATYPES[spec["dtype"]]} '
        f"dims: [ {_dims(spec)} ] }}" for spec in inputs_of(signature))]
    lines += ["]", "output [",
              f'  {{ name: "{signature["output_name"]}" data_type: TYPE_FP32 '
              f"dims: [ {', '.join(str(d) for d in output_shape)} ] }}", "]",
              f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]"]
    if batching:
        preferred = min(preferred_batch, signature["max_rows"])
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {preferred} ]",
                  f"  max_queue_delay_microseconds: {queue_delay_ms * 1000}", "}"]
    for key, value in parameters.items():
        lines.append(f'parameters {{ key: "{key}" value {{ string_value: {json.dumps(value)} }} }}')
    return "\n".join(lines) + "\n"


def write_repository(folder: Path, root: Path, models: list[str], runtime: str, threads: int,
                     batching: bool, preferred_batch: int, queue_delay_ms: int,
                     instances: int = 1) -> None:
    """A Triton model repository for `models` in `folder` (written afresh, atomically)."""
    from deploybench.files import atomic_write_text
    from deploybench.manifest import load_manifest
    staging = folder.with_name(folder.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    for name in models:
        manifest = load_manifest(root, name)
        hosting.served_format(manifest, runtime)  # nothing to serve: one line, here
        parameters = {"artifacts": str(root), "runtime": runtime, "threads": str(threads)}
        (staging / name / "1").mkdir(parents=True)
        atomic_write_text(staging / name / "config.pbtxt", model_config(
            name, manifest.signature(), list(manifest.outputs[0].shape[1:]), parameters,
            batching, preferred_batch, queue_delay_ms, instances))
        atomic_write_text(staging / name / "1" / "model.py", MODEL_PY)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


# --- tritonserver from nvidia-pytriton --------------------------------------------------------


def distribution() -> Path:
    """Where nvidia-pytriton keeps tritonserver (bin/, backends/, python_backend_stubs/)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nvidia-pytriton is not installed in this environment "
                         f"({sys.prefix}): `make setup` makes the Triton environment")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def backends_folder(dist: Path) -> Path:
    """Triton's backends with the Python backend's stub for this interpreter's version, made
    once per environment (PyTriton copies them into a temporary workspace at every start)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = Path(sys.prefix) / "share" / "deploybench-triton" / version / "backends"
    if (folder / "python" / "triton_python_backend_stub").exists():
        return folder
    staging = folder.with_name(f"backends.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(dist / "backends", staging)
    shutil.copy2(dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                 staging / "python" / "triton_python_backend_stub")
    try:
        staging.rename(folder)
    except OSError:  # another start made it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def check_numpy() -> None:
    """Triton's Python backend reads and writes tensors through numpy 1.x's C interface: with
    numpy 2 every answer comes back empty (a 500). Refuse to start instead."""
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise SystemExit(f"numpy {numpy.__version__} in {sys.prefix}: Triton's Python backend "
                         "needs numpy<2 (`make setup` makes the Triton environment with it)")


def command(args: argparse.Namespace, repository: Path, shm_prefix: str) -> list[str]:
    dist = distribution()
    key = secrets.token_urlsafe(24)
    return [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backends_folder(dist)}",
        f"--cache-directory={dist / 'caches'}",
        "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
        "--disable-auto-complete-config", f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        f"--http-address={args.host}", f"--http-port={args.http_port}",
        f"--grpc-address={args.host}", f"--grpc-port={args.grpc_port}",
        "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
        f"--metrics-address={args.host}", f"--metrics-port={args.metrics_port}",
        "--metrics-config=summary_latencies=true",
        f"--http-restricted-api={RESTRICTED_APIS}:admin-key={key}",
        f"--grpc-restricted-protocol={RESTRICTED_APIS}:admin-key={key}",
        "--allow-sagemaker=false", "--allow-vertex-ai=false",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--log-verbose=0",
    ]


def environment(args: argparse.Namespace) -> dict[str, str]:
    """Triton's environment: its libraries, and this interpreter's own libpython ahead of any
    other (the backend stub loads libpython3.11.so.1.0 by name; the system's crashes it)."""
    dist = distribution()
    libraries = [str(dist.parent.parent / "nvidia_pytriton.libs"),
                 str(dist / "external_libs"), sysconfig.get_config_var("LIBDIR") or ""]
    inherited = os.environ.get("LD_LIBRARY_PATH", "")
    return {**os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(p for p in [*libraries, inherited] if p),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get("PATH", "")]),
            "OMP_NUM_THREADS": str(args.threads), "TF_CPP_MIN_LOG_LEVEL": "2"}


def remove_segments(prefix: str) -> list[str]:
    """Triton's Python-backend shared-memory segments of this server (they outlive a Triton
    that was killed); returns what was removed."""
    removed = []
    for path in SHM_DIR.glob(f"{prefix}*"):
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return removed


def _die_with_parent() -> None:
    """In the child: SIGTERM when this launcher dies, however it dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run(args: argparse.Namespace) -> int:
    check_numpy()
    root = args.artifacts.resolve()
    models = hosting.model_names(root, args.models)
    repository = (args.repository or Path.cwd() / "triton-repository").resolve()
    write_repository(repository, root, models, args.runtime, args.threads, args.batching,
                     args.max_batch_size, args.batch_timeout_ms, args.instances)
    shm_prefix = f"{SHM_PREFIX}_{os.getpid()}_"
    triton = subprocess.Popen(command(args, repository, shm_prefix), env=environment(args),
                              preexec_fn=_die_with_parent)

    def stop(signum: int, _frame: Any) -> None:
        if triton.poll() is None:
            triton.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        code = triton.wait()
    finally:
        if triton.poll() is None:
            try:
                triton.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                triton.kill()
                triton.wait()
        removed = remove_segments(shm_prefix)
        if removed:
            print(f"removed {len(removed)} shared-memory segment(s) Triton left: "
                  f"{', '.join(removed)}", flush=True)
    return code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.health:
        sys.exit(0 if hosting.healthy(args.artifacts.resolve(), args.models, args.http_port)
                 else 1)
    if args.runtime is None:
        raise SystemExit("--runtime is required to serve: tensorflow or pytorch")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
