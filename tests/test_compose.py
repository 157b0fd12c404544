"""docker-compose.yml and serving/config/, checked without a Docker engine.

The compose file is rendered by docker-compose itself (`docker-compose config`, Debian's 1.29,
installed by `make setup`; `docker compose` v2 works too) against a real export; TF Serving's
config files are parsed with TF Serving's protos; the entrypoint scripts run with stand-ins for
the server binaries; the TF Serving healthcheck runs against the TF Serving test double.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import text_format

from deploybench import layout
from deploybench.manifest import exported_models, load_manifest
from deploybench.serving import targets as registry
from deploybench.serving.images import TRITON_REQUIREMENTS, requirement_lines
from deploybench.serving.native import tfserving_command
from deploybench.serving.targets import loopback_endpoints
from deploybench.settings import load_settings, read_env_file

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
CONFIG_DIR = REPO / "serving" / "config"
ENV = read_env_file(REPO / ".env")
KSERVE = ("kserve-tensorflow", "kserve-pytorch", "kserve-onnxruntime")
TRITON = ("triton-tensorflow", "triton-pytorch")
SERVERS = ("tfserving", "torchserve", *KSERVE, *TRITON)
# one image each, the same code for every runtime: the same command but for --runtime
ONE_IMAGE = (KSERVE, TRITON)
BATCHING_SERVERS = ("tfserving", "torchserve")  # KServe's Python server has no batching
TRITON_PYTHON = "/opt/triton-venv/bin/python"  # the image's numpy<2 environment
LOCUST = ("locust-master", "locust-worker")
MONITORING = ("prometheus", "grafana")
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
LOCUSTFILE_IN_CONTAINER = "/opt/deploybench/loadtest/locustfile.py"  # COPY'd by the image


# --- rendering ---------------------------------------------------------------------------------


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail("neither docker-compose nor `docker compose` is installed: run `make setup`")


def render(export_root: Path, **overrides: str) -> dict[str, Any]:
    """`docker-compose config` with .env, the export root and `overrides` in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ENV}  # .env decides, unless overridden
    env.update(DEPLOYBENCH_ARTIFACTS=str(export_root), **overrides)
    result = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def rendered(export_root: Path) -> dict[str, Any]:
    return render(export_root)


@pytest.fixture(scope="module")
def services(rendered: dict[str, Any]) -> dict[str, Any]:
    return rendered["services"]


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(host source, container target, read-only) for every volume, in v1 or v2 form."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            source, target = volume["source"], volume["target"]
            read_only = bool(volume.get("read_only"))
        found.append((source, target, read_only))
    return found


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) for every published port, in v1 or v2 form."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            match = re.fullmatch(r"(?:(.+):)?(\d+):(\d+)(?:/\w+)?", port)
            assert match, f"unexpected port form {port!r}"
            ip, host, container = match.groups()
            found.append((ip or "0.0.0.0", int(host), int(container)))
        else:
            found.append((port.get("host_ip", "0.0.0.0"), int(port["published"]),
                          int(port["target"])))
    return found


def host_path(container_path: str, service: dict[str, Any]) -> Path | None:
    """Where a path inside the container comes from on the host, if a bind mount provides it."""
    for source, target, _ in sorted(mounts(service), key=lambda m: -len(m[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return Path(source) / os.path.relpath(container_path, target)
    return None


def container_paths(service: dict[str, Any]) -> list[str]:
    """Absolute paths named in the entrypoint, command, healthcheck and environment."""
    words: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        words += value if isinstance(value, list) else value.split()
    words += service.get("healthcheck", {}).get("test", [])
    words += [str(v) for v in (service.get("environment") or {}).values()]
    paths = []
    for word in words:
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        if value.startswith("/"):
            paths.append(value)
    return paths


def size_bytes(value: Any) -> int:
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", str(value).strip().lower())
    assert match, f"unexpected memory size {value!r}"
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " "))


def properties(path: Path) -> dict[str, str]:
    """A Java .properties file, as TorchServe reads config.properties (no continuations used)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and line[0] not in "#!":
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# --- TF Serving's config protos ----------------------------------------------------------------


def tf_serving_message(kind: str) -> Any:
    """A message class from TF Serving's protos for its batching and monitoring files.

    tensorflow-serving-api 2.21 ships no session_bundle_config_pb2 nor monitoring_config_pb2,
    so when they are missing the two messages are built here, field for field (names, numbers,
    types), from tensorflow_serving/servables/tensorflow/session_bundle_config.proto and
    tensorflow_serving/config/monitoring_config.proto of TF Serving 2.20: text_format then
    rejects any field, type or value TF Serving would reject.
    """
    try:
        if kind == "BatchingParameters":
            from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

            return session_bundle_config_pb2.BatchingParameters
        from tensorflow_serving.config import monitoring_config_pb2

        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        return _transcribed_messages()[kind]


@functools.cache
def _transcribed_messages() -> dict[str, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    field = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="deploybench_tests/tf_serving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )

    def message(name: str, fields: list[tuple[str, int, int, str | None, bool]]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            entry = msg.field.add(name=field_name, number=number, type=kind)
            entry.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
            if type_name:
                entry.type_name = type_name

    int64, string = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
    boolean, msg = ".google.protobuf.BoolValue", field.TYPE_MESSAGE
    message("BatchingParameters", [
        ("max_batch_size", 1, msg, int64, False),
        ("batch_timeout_micros", 2, msg, int64, False),
        ("max_enqueued_batches", 3, msg, int64, False),
        ("num_batch_threads", 4, msg, int64, False),
        ("thread_pool_name", 5, msg, string, False),
        ("allowed_batch_sizes", 6, field.TYPE_INT64, None, True),
        ("pad_variable_length_inputs", 7, field.TYPE_BOOL, None, False),
        ("enable_large_batch_splitting", 8, msg, boolean, False),
        ("max_execution_batch_size", 9, msg, int64, False),
    ])
    message("PrometheusConfig", [
        ("enable", 1, field.TYPE_BOOL, None, False),
        ("path", 2, field.TYPE_STRING, None, False),
    ])
    message("MonitoringConfig", [
        ("prometheus_config", 1, msg, ".tensorflow.serving.PrometheusConfig", False),
    ])
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in ("BatchingParameters", "MonitoringConfig")
    }


def parse_batching(path: Path) -> Any:
    return text_format.Parse(path.read_text(), tf_serving_message("BatchingParameters")())


# --- the compose file --------------------------------------------------------------------------


def test_compose_config_renders_servers_and_loadtest_profile(services: dict[str, Any]) -> None:
    assert set(services) == {*SERVERS, *LOCUST, *MONITORING}
    for name in SERVERS:
        assert not services[name].get("profiles"), f"{name} must start with a plain `up`"
    for name in LOCUST:
        assert services[name]["profiles"] == ["loadtest"]
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"]
    worker = services["locust-worker"]
    assert "container_name" not in worker and not worker.get("ports"), "must scale"


def test_images_are_pinned_to_the_versions_the_project_uses(services: dict[str, Any]) -> None:
    from importlib.metadata import version

    tfs, ts = services["tfserving"]["image"], services["torchserve"]["image"]
    api = version("tensorflow-serving-api").split(".")[:2]
    assert re.fullmatch(r"tensorflow/serving:(\d+)\.(\d+)\.\d+", tfs), tfs
    assert tfs.split(":")[1].split(".")[:2] == api, "TF Serving image != tensorflow-serving-api"
    for name, base_image in (("torchserve", f"pytorch/torchserve:{version('torchserve')}-cpu"),
                             ("locust-master", f"locustio/locust:{version('locust')}")):
        build = services[name]["build"]
        dockerfile = (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).read_text()
        # the official image by default, in the Dockerfile and in compose's build argument
        assert re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE) == ["${BASE_IMAGE}"]
        assert re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.MULTILINE) == [base_image]
        assert build["args"]["BASE_IMAGE"] == base_image, name
        assert services[name]["image"].startswith("deploybench-"), name  # never the base's tag
    assert ts.endswith(f":{version('torchserve')}-cpu")
    # one KServe image for every runtime, with the versions this checkout pins
    assert {services[name]["image"] for name in KSERVE} == {services["kserve-pytorch"]["image"]}
    assert services["kserve-tensorflow"]["image"] == f"deploybench-kserve:{version('kserve')}"
    build = services["kserve-pytorch"]["build"]
    kserve_file = (REPO / build["context"] / build["dockerfile"]).read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    for pin in ('"kserve==', '"torch==', '"orjson', '"onnxruntime'):
        (spec,) = re.findall(rf'{pin}[^"]*"', pyproject)
        assert spec in kserve_file, spec
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-\S+$", kserve_file, re.MULTILINE)
    # one Triton image for both frameworks, with requirements-triton.txt's versions in a
    # numpy<2 environment of its own, never the base image's Python packages
    pins = requirement_lines(TRITON_REQUIREMENTS)
    assert "numpy<2" in pins
    (pytriton,) = [pin.split("==")[1] for pin in pins if pin.startswith("nvidia-pytriton==")]
    assert {services[name]["image"] for name in TRITON} == {f"deploybench-triton:{pytriton}"}
    build = services["triton-pytorch"]["build"]
    assert build == services["triton-tensorflow"]["build"]
    assert build["args"]["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    triton_file = (REPO / build["context"] / build["dockerfile"]).read_text()
    assert re.findall(r"^FROM\s+(\S+)", triton_file, re.MULTILINE) == ["${BASE_IMAGE}"]
    assert re.findall(r"^ARG BASE_IMAGE=(\S+)$", triton_file, re.MULTILINE) == [
        "python:3.11-slim-bookworm"]
    for pin in pins:
        assert f'"{pin}"' in triton_file, pin
    assert "-m venv /opt/triton-venv" in triton_file
    pip_lines = re.findall(r"(\S*pip) install", triton_file)
    assert pip_lines and set(pip_lines) == {"/opt/triton-venv/bin/pip"}, pip_lines
    assert re.search(r"pip install --no-cache-dir --no-deps /opt/deploybench\b", triton_file)
    # the backends folder the launcher writes in the environment, made while it is writable
    assert "backends_folder(t.distribution())" in triton_file
    # the offline stand-in installs the same environment where the image keeps it
    offline = (REPO / "docker/offline/triton.Dockerfile").read_text()
    assert "python3.11 -m venv /opt/triton-venv" in offline
    # the torchserve image adds the handler's JSON parser, in the range the tests run with
    (spec,) = re.findall(r'"(orjson[^"]*)"', (REPO / "pyproject.toml").read_text())
    assert f'"{spec}"' in (REPO / "docker/torchserve/Dockerfile").read_text()
    assert services["locust-master"]["image"] == services["locust-worker"]["image"]
    # the monitoring profile: official images at a fixed release, never a floating tag
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])


def test_every_referenced_file_exists_after_export(
    services: dict[str, Any], export_root: Path
) -> None:
    for name, service in services.items():
        for source, _, _ in mounts(service):
            if Path(source) == LOCUSTFILE.parent and not LOCUSTFILE.parent.exists():
                continue  # checked below
            assert Path(source).exists(), f"{name}: mount source {source} missing"
        for path in container_paths(service):
            host = host_path(path, service)
            if host is None or path == LOCUSTFILE_IN_CONTAINER:
                continue  # inside the image (/bin/bash, /tmp/...), or the locustfile below
            assert host.exists(), f"{name}: {path} (host {host}) missing"
    build = services["locust-master"]["build"]
    assert (REPO / build["context"] / build["dockerfile"]).is_file()
    # TorchServe's model store: one .mar per exported model, resolving inside the export root
    store = Path(host_path("/models/model-store", services["torchserve"]))
    models = exported_models(export_root)
    assert sorted(p.stem for p in store.glob("*.mar")) == models
    for mar in store.glob("*.mar"):
        assert mar.resolve().is_relative_to(export_root.resolve()), f"{mar} leaves the mount"
    if not LOCUSTFILE.exists():
        pytest.skip("loadtest/locustfile.py is not written yet (the loadtest stage)")
    # the locust image installs the kit from this checkout (the build context is the repo), and
    # its -f names the locustfile where the image copied it
    dockerfile = (REPO / build["context"] / build["dockerfile"]).read_text()
    checkout = Path(LOCUSTFILE_IN_CONTAINER).parent.parent
    for package in ("deploybench", "serving", "loadtest"):
        assert f"COPY {package} {checkout / package}" in dockerfile, package
    assert re.search(rf"pip install .*--no-deps .*{checkout}$", dockerfile, re.MULTILINE)
    for name in LOCUST:
        assert LOCUSTFILE_IN_CONTAINER in services[name]["command"], name
        assert build == services[name]["build"], name


def test_published_ports_bind_loopback_only(services: dict[str, Any]) -> None:
    expected = {
        "tfserving": {8500, 8501},
        "torchserve": {8080, 8081, 8082},
        "kserve-tensorflow": {8080, 8081},
        "kserve-pytorch": {8080, 8081},
        "kserve-onnxruntime": {8080, 8081},
        "triton-tensorflow": {8000, 8001, 8002},
        "triton-pytorch": {8000, 8001, 8002},
        "locust-master": {8089},
        "locust-worker": set(),
        "prometheus": {9090},
        "grafana": {3000},
    }
    for name, service in services.items():
        ports = published(service)
        assert {container for _, _, container in ports} == expected[name], name
        for ip, _, _ in ports:
            assert ip == "127.0.0.1", f"{name} publishes on {ip}"
        assert service.get("network_mode") != "host", name
        assert "expose" not in service or not service["expose"], name
    # the published ports are where the registry says each server listens by default
    for target in registry.targets().values():
        if target.compose_service in (*KSERVE, *TRITON):
            declared = {registry.host_port(e.default)[1] for e in target.endpoints}
            ports = {host for _, host, _ in published(services[target.compose_service])}
            assert ports == declared, target.name


def test_the_load_generator_reaches_every_server_by_service_name(
        services: dict[str, Any]) -> None:
    """locust's address options (the registry's locust_option, as DEPLOYBENCH_* variables) name
    each server's service and a port it listens on inside its container."""
    environment = services["locust-master"]["environment"]
    assert services["locust-worker"]["environment"] == environment
    for target in registry.targets().values():
        if target.compose_service is None:
            continue
        inside = {port for _, _, port in published(services[target.compose_service])}
        for endpoint in (e for e in target.endpoints if e.locust_option):
            address = str(environment[endpoint.env_var])
            assert registry.host_port(address)[0] == target.compose_service, address
            assert registry.host_port(address)[1] in inside, address
            assert ("://" in address) == ("://" in endpoint.default), address


def test_mounts_are_read_only(services: dict[str, Any], export_root: Path) -> None:
    for name, service in services.items():
        sources = mounts(service)
        assert sources, name
        for source, target, read_only in sources:
            assert read_only, f"{name}: {source} -> {target} is writable"
    for name in (*SERVERS, *LOCUST):
        targets = {t for s, t, _ in mounts(services[name]) if Path(s) == export_root}
        assert targets == {"/models"}, f"{name} must mount the export root at /models"


def test_servers_run_unprivileged_on_read_only_root(services: dict[str, Any]) -> None:
    assert services["tfserving"]["user"] == "65534:65534"  # nobody
    assert services["torchserve"]["user"] == "model-server"  # the image's own user
    for name in KSERVE:
        assert services[name]["user"] == "kserve"  # created by docker/kserve/Dockerfile
    triton_file = (REPO / "docker/triton/Dockerfile").read_text()
    assert re.search(r"useradd --system .*\btriton$", triton_file, re.MULTILINE)
    assert re.findall(r"^USER (\S+)$", triton_file, re.MULTILINE) == ["triton"]
    for name in TRITON:
        assert services[name]["user"] == "triton"
    for name in LOCUST:
        assert services[name]["user"] == "locust"
    assert services["prometheus"]["user"] == "nobody" and services["grafana"]["user"] == "472"
    for name in (*SERVERS, *MONITORING):
        service = services[name]
        assert service["read_only"] is True, name
        assert service["init"] is True, name
        assert not service.get("privileged"), name
        assert service["tmpfs"], name  # where it writes, on a read-only root
        if name in SERVERS:
            assert "/tmp" in service["tmpfs"], name
    for name in (*KSERVE, *TRITON):  # an AOTInductor package maps its library as code
        assert "/aoti:exec" in services[name]["tmpfs"], name
        assert services[name]["environment"]["TMPDIR"] == "/aoti", name


def test_triton_writes_its_repository_to_a_tmpfs_and_has_shared_memory_stated(
        services: dict[str, Any]) -> None:
    """The launcher writes Triton's model repository at each start: into a tmpfs, as the root
    file system is read-only. Triton's Python backend moves every tensor through /dev/shm:
    its size is stated, above Docker's default 64 MiB."""
    for name in TRITON:
        service = services[name]
        flags = dict(flag.split("=", 1) for flag in service["command"] if "=" in flag)
        repository = flags["--repository"]
        mounted = [t.split(":")[0] for t in service["tmpfs"]]
        assert any(repository.startswith(t.rstrip("/") + "/") for t in mounted), repository
        assert size_bytes(service["shm_size"]) >= 256 * 2**20, name
        assert service["entrypoint"] == ["/bin/sh", "/opt/deploybench/triton-entrypoint.sh"]
        assert service["command"][:3] == [TRITON_PYTHON, "-m", "deploybench.serving.triton_server"]
        assert flags["--host"] == "0.0.0.0", name  # inside the container; published on loopback
    copied = re.findall(r"^COPY docker/triton/entrypoint\.sh (\S+)$",
                        (REPO / "docker/triton/Dockerfile").read_text(), re.MULTILINE)
    assert copied == ["/opt/deploybench/triton-entrypoint.sh"]


def test_limits_and_threads_identical_for_both_servers(services: dict[str, Any]) -> None:
    tfs, ts = services["tfserving"], services["torchserve"]
    assert float(tfs["cpus"]) == float(ts["cpus"]) == float(ENV["SERVER_CPUS"])
    assert size_bytes(tfs["mem_limit"]) == size_bytes(ts["mem_limit"])
    assert size_bytes(tfs["mem_limit"]) == size_bytes(ENV["SERVER_MEMORY"])
    intra = ENV["SERVER_INTRA_OP_THREADS"]
    assert f"--tensorflow_intra_op_parallelism={intra}" in tfs["command"]
    assert f"--tensorflow_inter_op_parallelism={ENV['SERVER_INTER_OP_THREADS']}" in tfs["command"]
    # stated, never TF Serving's default (4 per host CPU, blind to the `cpus` limit), and at
    # least what fills every batching thread's batch
    assert f"--rest_api_num_threads={ENV['SERVER_REST_THREADS']}" in tfs["command"]
    assert str(tfs["environment"]["BATCH_THREADS"]) == intra  # a batch thread per core
    batching = parse_batching(CONFIG_DIR / "batching.config")
    assert int(ENV["SERVER_REST_THREADS"]) >= (
        batching.num_batch_threads.value * batching.max_execution_batch_size.value)
    assert str(ts["environment"]["DEPLOYBENCH_TORCH_THREADS"]) == intra
    assert str(ts["environment"]["OMP_NUM_THREADS"]) == intra
    for name in KSERVE:  # the same limits, the same intra-op threads for every runtime
        kserve = services[name]
        assert float(kserve["cpus"]) == float(ts["cpus"])
        assert size_bytes(kserve["mem_limit"]) == size_bytes(ts["mem_limit"])
        assert f"--threads={intra}" in kserve["command"], name
        assert str(kserve["environment"]["OMP_NUM_THREADS"]) == intra
    for name in TRITON:  # the same limits and threads as the others, on the same batching
        triton = services[name]
        assert float(triton["cpus"]) == float(ts["cpus"])
        assert size_bytes(triton["mem_limit"]) == size_bytes(ts["mem_limit"])
        assert f"--threads={intra}" in triton["command"], name
        assert str(triton["environment"]["OMP_NUM_THREADS"]) == intra
    for group in ONE_IMAGE:
        commands = [{c for c in services[name]["command"] if not c.startswith("--runtime=")}
                    for name in group]  # the same command but for the runtime each hosts
        assert all(command == commands[0] for command in commands), group
    # one allocator setting for both (glibc keeps freed memory: no page faults per batch)
    for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        assert int(ENV[key]) > 0
        assert str(tfs["environment"][key]) == str(ts["environment"][key]) == ENV[key]


def test_limits_follow_the_environment(export_root: Path) -> None:
    services = render(export_root, SERVER_CPUS="1.5", SERVER_MEMORY="3g",
                      SERVER_INTRA_OP_THREADS="3", SERVER_REST_THREADS="12")["services"]
    for name in SERVERS:
        assert float(services[name]["cpus"]) == 1.5
        assert size_bytes(services[name]["mem_limit"]) == 3 * 1024**3
    assert "--tensorflow_intra_op_parallelism=3" in services["tfserving"]["command"]
    assert "--rest_api_num_threads=12" in services["tfserving"]["command"]
    assert str(services["torchserve"]["environment"]["DEPLOYBENCH_TORCH_THREADS"]) == "3"
    for name in (*KSERVE, *TRITON):
        assert "--threads=3" in services[name]["command"], name


def test_healthchecks_ask_for_model_readiness(services: dict[str, Any]) -> None:
    tfs = services["tfserving"]["healthcheck"]["test"]
    assert tfs[0] == "CMD" and tfs[-2:] == ["/deploybench/tfserving/healthcheck.sh",
                                            "/models/models.config"]
    ts = services["torchserve"]["healthcheck"]["test"]
    assert ts[0] == "CMD" and ts[-1] == "health" and "ping" not in " ".join(ts)
    for name in KSERVE:  # the V2 model-ready endpoint of every exported model
        check = services[name]["healthcheck"]["test"]
        assert check[0] == "CMD" and "--health" in check and "--models=all" in check, check
    for name in TRITON:  # the same, asked by the launcher in the Triton environment
        check = services[name]["healthcheck"]["test"]
        assert check[:4] == ["CMD", TRITON_PYTHON, "-m", "deploybench.serving.triton_server"]
        assert {"--health", "--models=all", "--http-port=8000"} <= set(check), check
    for name in LOCUST[:1]:
        for server in SERVERS:  # the load starts once every server is healthy
            assert services[name]["depends_on"][server]["condition"] == "service_healthy"


def test_batching_is_off_by_default_and_switches_both_servers(
    services: dict[str, Any], export_root: Path
) -> None:
    assert ENV["BATCHING"] == "false"
    for name in BATCHING_SERVERS:
        assert str(services[name]["environment"]["BATCHING"]) == "false"
    on = render(export_root, BATCHING="true", MAX_BATCH_SIZE="16", BATCH_TIMEOUT_MS="2")
    for name in KSERVE:
        assert "BATCHING" not in services[name]["environment"], name
    for name in BATCHING_SERVERS:
        environment = on["services"][name]["environment"]
        assert str(environment["BATCHING"]) == "true"
        assert str(environment["MAX_BATCH_SIZE"]) == "16"
        assert str(environment["BATCH_TIMEOUT_MS"]) == "2"
        assert on["services"][name] != services[name]
    for name in TRITON:  # the entrypoint adds --batching; the bound and wait are flags
        assert str(services[name]["environment"]["BATCHING"]) == "false"
        assert {f"--max-batch-size={ENV['MAX_BATCH_SIZE']}",
                f"--batch-timeout-ms={ENV['BATCH_TIMEOUT_MS']}"} <= set(services[name]["command"])
        assert str(on["services"][name]["environment"]["BATCHING"]) == "true"
        assert {"--max-batch-size=16", "--batch-timeout-ms=2"} <= set(
            on["services"][name]["command"])


# --- serving/config ----------------------------------------------------------------------------


def test_models_config_parses_and_matches_export_layout(export_root: Path) -> None:
    from tensorflow_serving.config import model_server_config_pb2

    text = (export_root / layout.MODELS_CONFIG).read_text()
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    entries = config.model_config_list.config
    assert sorted(e.name for e in entries) == exported_models(export_root)
    for entry in entries:
        assert entry.model_platform == "tensorflow"
        assert entry.base_path == layout.savedmodel_base(layout.CONTAINER_ROOT, entry.name)
        host = export_root / os.path.relpath(entry.base_path, layout.CONTAINER_ROOT)
        version = load_manifest(export_root, entry.name).version
        assert (host / str(version) / "saved_model.pb").is_file()
        assert [p.name for p in host.iterdir()] == [str(version)], "one version, TF layout"


def test_monitoring_config_parses_with_prometheus_on() -> None:
    message = tf_serving_message("MonitoringConfig")()
    config = text_format.Parse((CONFIG_DIR / "monitoring.config").read_text(), message)
    assert config.prometheus_config.enable is True
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_batching_config_parses_and_agrees_with_env(export_root: Path) -> None:
    config = parse_batching(CONFIG_DIR / "batching.config")
    assert config.max_execution_batch_size.value == int(ENV["MAX_BATCH_SIZE"])
    assert config.batch_timeout_micros.value == int(ENV["BATCH_TIMEOUT_MS"]) * 1000
    assert config.enable_large_batch_splitting.value is True
    assert config.max_batch_size.value >= config.max_execution_batch_size.value
    for model in exported_models(export_root):
        assert config.max_batch_size.value >= load_manifest(export_root, model).max_rows
    assert config.num_batch_threads.value == int(ENV["SERVER_INTRA_OP_THREADS"])
    assert config.max_enqueued_batches.value >= 1
    assert not config.allowed_batch_sizes


def test_torchserve_config_is_hardened() -> None:
    config = properties(CONFIG_DIR / "config.properties")
    assert config["enable_model_api"] == "false"
    assert config["use_env_allowed_urls"] == "false"
    assert config["enable_envvars_config"] == "false"
    assert config["install_py_dep_per_model"] == "false"
    assert config["disable_token_authorization"] == "true"  # loopback-only, see the file
    allowed = config["allowed_urls"].split(",")
    store = config["model_store"]
    assert store == "/models/model-store"

    def allowed_url(url: str) -> bool:
        return any(re.fullmatch(p, url, re.IGNORECASE) for p in allowed)

    assert allowed_url(f"file://{store}/digits-mlp.mar")
    for url in ("http://example.com/x.mar", "https://example.com/x.mar", "file:///etc/passwd",
                "file:///models/other/x.mar", "s3://bucket/x.mar"):
        assert not allowed_url(url), url
    assert config["load_models"] == "all"
    assert config["default_workers_per_model"] == "1"
    assert config["models"] == "$$DEPLOYBENCH_TS_MODELS$$"
    assert config["metrics_mode"] == "prometheus"
    ports = {k: v.rsplit(":", 1)[1] for k, v in config.items() if k.endswith("_address")}
    assert ports == {"inference_address": "8080", "management_address": "8081",
                     "metrics_address": "8082"}


# --- the entrypoints, with stand-ins for the server binaries -----------------------------------


@pytest.fixture
def stub_bin(tmp_path: Path) -> Iterator[Path]:
    """A folder whose tensorflow_model_server and torchserve record how they were called."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("tensorflow_model_server", "torchserve"):
        script = folder / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            "with open(os.environ['STUB_RECORD'], 'a') as out:\n"
            "    out.write(json.dumps({'argv': sys.argv[1:], "
            "'models': os.environ.get('DEPLOYBENCH_TS_MODELS')}) + '\\n')\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    yield folder


def run_entrypoint(command: list[str], stub_bin: Path, tmp_path: Path,
                   **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    record = tmp_path / "calls.jsonl"
    record.unlink(missing_ok=True)
    environment = {"PATH": f"{stub_bin}:{os.environ['PATH']}", "STUB_RECORD": str(record), **env}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
    lines = record.read_text().splitlines() if record.exists() else []
    return result, [json.loads(line) for line in lines]


def tfserving_entrypoint(stub_bin: Path, tmp_path: Path, export_root: Path, **env: str):  # noqa: ANN201
    rendered = tmp_path / "batching.config"
    rendered.unlink(missing_ok=True)
    result, calls = run_entrypoint(
        ["bash", str(REPO / "docker/tfserving/entrypoint.sh"), "--port=8500",
         f"--model_config_file={export_root / 'models.config'}"],
        stub_bin, tmp_path,
        DEPLOYBENCH_BATCHING_TEMPLATE=str(CONFIG_DIR / "batching.config"),
        DEPLOYBENCH_BATCHING_FILE=str(rendered), **env,
    )
    return result, calls, rendered


def test_tfserving_entrypoint_adds_batching_only_when_on(
    stub_bin: Path, tmp_path: Path, export_root: Path
) -> None:
    result, calls, rendered = tfserving_entrypoint(
        stub_bin, tmp_path, export_root, BATCHING="false", MAX_BATCH_SIZE="8", BATCH_TIMEOUT_MS="5"
    )
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert call["argv"] == ["--port=8500", f"--model_config_file={export_root}/models.config"]
    assert not rendered.exists()

    result, calls, rendered = tfserving_entrypoint(
        stub_bin, tmp_path, export_root, BATCHING="true", MAX_BATCH_SIZE="16", BATCH_TIMEOUT_MS="2",
        BATCH_THREADS="3",
    )
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert call["argv"][-2:] == ["--enable_batching=true", f"--batching_parameters_file={rendered}"]
    config = parse_batching(rendered)
    assert config.max_execution_batch_size.value == 16
    assert config.batch_timeout_micros.value == 2000
    assert config.num_batch_threads.value == 3
    template = parse_batching(CONFIG_DIR / "batching.config")
    assert config.max_batch_size.value == template.max_batch_size.value
    assert config.max_enqueued_batches.value == template.max_enqueued_batches.value
    assert config.enable_large_batch_splitting.value is True

    # a batch bound above the largest request raises the request bound with it
    result, _, rendered = tfserving_entrypoint(
        stub_bin, tmp_path, export_root, BATCHING="true", MAX_BATCH_SIZE="128", BATCH_TIMEOUT_MS="0"
    )
    assert result.returncode == 0, result.stderr
    config = parse_batching(rendered)
    assert config.max_batch_size.value == config.max_execution_batch_size.value == 128


def test_native_tfserving_gets_the_compose_flags(
    services: dict[str, Any], stub_bin: Path, tmp_path: Path, export_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Native mode starts TF Serving with the flags the compose service has, values from .env."""
    monkeypatch.setenv("PATH", f"{stub_bin}:{os.environ['PATH']}")
    for key in ENV:
        monkeypatch.delenv(key, raising=False)  # .env decides
    command, env = tfserving_command(tmp_path, export_root, ["digits-mlp"], load_settings(),
                                     loopback_endpoints().of("tfserving"))
    native = dict(flag.split("=", 1) for flag in command if flag.startswith("--"))
    compose = dict(flag.split("=", 1) for flag in services["tfserving"]["command"])
    assert native.keys() == compose.keys()
    for flag in ("--tensorflow_intra_op_parallelism", "--tensorflow_inter_op_parallelism",
                 "--rest_api_num_threads", "--port", "--rest_api_port"):
        assert native[flag] == compose[flag], flag
    for key in ("BATCHING", "MAX_BATCH_SIZE", "BATCH_TIMEOUT_MS", "BATCH_THREADS"):
        assert env[key] == str(services["tfserving"]["environment"][key]).lower(), key


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BATCHING": "maybe"}, "BATCHING must be true or false"),
        ({"BATCHING": "true", "MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE must be a positive"),
        ({"BATCHING": "true", "BATCH_TIMEOUT_MS": "1.5"}, "BATCH_TIMEOUT_MS must be whole"),
        ({"BATCHING": "true", "BATCH_THREADS": "0"}, "BATCH_THREADS must be a positive"),
    ],
)
def test_tfserving_entrypoint_refuses_bad_settings(
    stub_bin: Path, tmp_path: Path, export_root: Path, env: dict[str, str], message: str
) -> None:
    result, calls, _ = tfserving_entrypoint(stub_bin, tmp_path, export_root, **env)
    assert result.returncode == 2
    assert message in result.stderr
    assert not calls


def test_tfserving_entrypoint_names_a_missing_export(stub_bin: Path, tmp_path: Path) -> None:
    result, calls, _ = tfserving_entrypoint(stub_bin, tmp_path, tmp_path / "nothing")
    assert result.returncode == 2
    assert "export the models first" in result.stderr
    assert not calls


def torchserve_entrypoint(stub_bin: Path, tmp_path: Path, store: Path, *args: str, **env: str):  # noqa: ANN201
    return run_entrypoint(
        [sys.executable, str(REPO / "docker/torchserve/entrypoint.py"), *args], stub_bin, tmp_path,
        DEPLOYBENCH_MODEL_STORE=str(store),
        DEPLOYBENCH_TS_CONFIG=str(CONFIG_DIR / "config.properties"), **env,
    )


def test_torchserve_entrypoint_writes_models_with_batching_from_env(
    stub_bin: Path, tmp_path: Path, export_root: Path
) -> None:
    store = export_root / layout.MODEL_STORE
    expected_models = exported_models(export_root)
    for env, batch_size in (
        ({"BATCHING": "false", "MAX_BATCH_SIZE": "8", "BATCH_TIMEOUT_MS": "5"}, 1),
        ({"BATCHING": "true", "MAX_BATCH_SIZE": "16", "BATCH_TIMEOUT_MS": "2"}, 16),
    ):
        result, calls = torchserve_entrypoint(stub_bin, tmp_path, store, **env)
        assert result.returncode == 0, result.stderr
        (call,) = calls
        assert call["argv"][:2] == ["--foreground", "--ncs"]
        assert call["argv"][call["argv"].index("--model-store") + 1] == str(store)
        assert call["argv"][call["argv"].index("--log-config") + 1] == (
            "/deploybench/config/torchserve-log4j2.xml")
        models = json.loads(call["models"])
        assert sorted(models) == expected_models
        for name, versions in models.items():
            version = str(load_manifest(export_root, name).version)
            settings = versions[version]
            assert settings["marName"] == f"{name}.mar"
            assert settings["batchSize"] == batch_size
            assert settings["maxBatchDelay"] == int(env["BATCH_TIMEOUT_MS"])
            assert settings["minWorkers"] == settings["maxWorkers"] == 1


def test_torchserve_entrypoint_refuses_missing_store_and_bad_settings(
    stub_bin: Path, tmp_path: Path, export_root: Path
) -> None:
    result, calls = torchserve_entrypoint(stub_bin, tmp_path, tmp_path / "nothing")
    assert result.returncode == 2 and "export the models first" in result.stderr
    store = export_root / layout.MODEL_STORE
    result, calls = torchserve_entrypoint(stub_bin, tmp_path, store, BATCHING="sometimes")
    assert result.returncode == 2 and "BATCHING must be true or false" in result.stderr
    assert not calls


def test_torchserve_health_is_unhealthy_without_a_server(
    stub_bin: Path, tmp_path: Path, export_root: Path
) -> None:
    result, _ = torchserve_entrypoint(
        stub_bin, tmp_path, export_root / layout.MODEL_STORE, "health",
        DEPLOYBENCH_TS_MANAGEMENT="http://127.0.0.1:9",  # discard port: nothing listens
    )
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: management API")


def triton_entrypoint(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess,
                                                         list[str] | None]:
    """docker/triton/entrypoint.sh running a stand-in for the launcher that records its args."""
    record = tmp_path / "argv.json"
    record.unlink(missing_ok=True)
    recorder = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"
    result = subprocess.run(
        ["sh", str(REPO / "docker/triton/entrypoint.sh"), sys.executable, "-c", recorder,
         str(record), "--threads=2"],
        env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=60)
    return result, json.loads(record.read_text()) if record.exists() else None


def test_triton_entrypoint_adds_batching_only_when_on(tmp_path: Path) -> None:
    result, argv = triton_entrypoint(tmp_path, BATCHING="false")
    assert result.returncode == 0, result.stderr
    assert argv == [str(tmp_path / "argv.json"), "--threads=2"]
    result, argv = triton_entrypoint(tmp_path, BATCHING="true")
    assert result.returncode == 0, result.stderr
    assert argv == [str(tmp_path / "argv.json"), "--threads=2", "--batching"]
    for env in ({"BATCHING": "maybe"}, {}):
        result, argv = triton_entrypoint(tmp_path, **env)
        assert result.returncode == 2 and argv is None
        assert "BATCHING must be true or false" in result.stderr


@pytest.mark.parametrize("batching", [False, True])
def test_native_triton_gets_the_compose_flags(
    services: dict[str, Any], tmp_path: Path, export_root: Path,
    monkeypatch: pytest.MonkeyPatch, batching: bool,
) -> None:
    """Native mode starts Triton's launcher with the flags each compose service has (ports,
    host and paths are each mode's own), values from .env."""
    from deploybench.serving.native import TRITON_PYTHON_ENV, NativeSetup, triton_native

    monkeypatch.setenv(TRITON_PYTHON_ENV, sys.executable)  # any interpreter: nothing runs
    for key in ENV:
        monkeypatch.delenv(key, raising=False)  # .env decides
    for name in TRITON:
        runtime = name.removeprefix("triton-")
        command, env = triton_native(runtime)(NativeSetup(
            tmp_path, export_root, ["digits-mlp"], load_settings(batching=batching),
            loopback_endpoints().of(name)))
        start = command.index("deploybench.serving.triton_server") + 1
        native: dict[str, str | None] = {}
        for word in command[start:]:
            if word.startswith("--"):
                native[word] = None
                flag = word
            else:
                native[flag] = word
        compose = dict(flag.split("=", 1) for flag in services[name]["command"]
                       if flag.startswith("--"))
        # the compose service's --batching comes from its entrypoint when BATCHING=true
        assert ("--batching" in native) == batching, name
        native.pop("--batching", None)
        assert native.keys() == compose.keys(), name
        for flag in ("--runtime", "--threads", "--max-batch-size", "--batch-timeout-ms"):
            assert native[flag] == compose[flag], (name, flag)
        assert env["OMP_NUM_THREADS"] == str(services[name]["environment"]["OMP_NUM_THREADS"])


# --- the TF Serving healthcheck, against the TF Serving test double ----------------------------


def test_tfserving_healthcheck_means_every_model_available(
    export_root: Path, tmp_path: Path
) -> None:
    from tests.fake_tfserving import FakeTFServing

    script = REPO / "docker" / "tfserving" / "healthcheck.sh"
    with FakeTFServing(export_root) as fake:
        env = {**os.environ, "TFS_REST_PORT": str(fake.rest_port)}

        def check(config: Path) -> subprocess.CompletedProcess:
            return subprocess.run(["bash", str(script), str(config)], env=env,
                                  capture_output=True, text=True, timeout=60)

        ok = check(export_root / layout.MODELS_CONFIG)
        assert ok.returncode == 0, ok.stdout
        assert ok.stdout.strip() == "healthy: AVAILABLE: " + " ".join(exported_models(export_root))

        missing = tmp_path / "models.config"
        missing.write_text(layout.models_config_text(["digits-mlp", "not-served"]))
        bad = check(missing)
        assert bad.returncode == 1
        assert "not-served" in bad.stdout and "404" in bad.stdout

    closed = subprocess.run(["bash", str(script), str(export_root / layout.MODELS_CONFIG)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert closed.returncode == 1 and "nothing listens" in closed.stdout
