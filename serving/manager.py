"""`deploybench serve` / `deploybench stop`: start the servers, return once they answer a golden
sample correctly, record exactly what was started, and stop exactly that."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploybench.errors import DeploybenchError, UsageError
from deploybench.files import atomic_write_json
from deploybench.fresh import pinned
from deploybench.golden import Golden
from deploybench.manifest import FP32_TOLERANCE, load_manifest, verify_artifacts
from deploybench.serving import engine, native, processes, targets, usage
from deploybench.serving.payload import PredictionError, matches_reference
from deploybench.serving.profile import Profile, knob_values
from deploybench.serving.targets import Endpoints, loopback_endpoints, make_client
from deploybench.settings import REPO_ROOT, ServerSettings, load_settings

STATE_FILE = "serving.json"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_PROJECT = "deploybench"
READY_TIMEOUT_S = 180.0


def state_dir() -> Path:
    return Path(os.environ.get("DEPLOYBENCH_STATE_DIR", ".deploybench"))


@contextmanager
def private_state() -> Iterator[Path]:
    """Servers a benchmark starts and stops itself keep their state in a folder of their own,
    so that they neither replace nor read the servers `deploybench serve` started (which
    `load` and `stop` find in the state folder)."""
    previous = os.environ.get("DEPLOYBENCH_STATE_DIR")
    folder = tempfile.mkdtemp(prefix="deploybench-state-")
    os.environ["DEPLOYBENCH_STATE_DIR"] = folder
    try:
        yield Path(folder)
    finally:
        if previous is None:
            os.environ.pop("DEPLOYBENCH_STATE_DIR", None)
        else:
            os.environ["DEPLOYBENCH_STATE_DIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class ServerStatus:
    name: str
    status: str  # up | unavailable | failed | stopped
    reason: str = ""
    mode: str = ""  # docker | native: how this server ran (or was tried)


@dataclass
class Deployment:
    """What `serve` started: read back by `stop`, `load` and `run`."""

    mode: str  # docker | native | docker+native (servers whose image is missing ran natively)
    root: str
    models: list[str]
    run_dir: str
    endpoints: dict[str, str]
    settings: dict[str, Any]
    servers: list[ServerStatus] = field(default_factory=list)
    processes: list[processes.ProcessRecord] = field(default_factory=list)
    started: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    # each server's knob values as it runs (serving/profile.py), and the profile they came from
    configurations: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile: str = ""

    def status(self, name: str) -> ServerStatus | None:
        return next((s for s in self.servers if s.name == name), None)

    def up(self) -> list[str]:
        return [s.name for s in self.servers if s.status == "up"]

    def uses_compose(self) -> bool:
        return "docker" in self.mode.split("+")

    def endpoints_obj(self) -> Endpoints:
        return Endpoints(self.endpoints)

    def observers(self) -> dict[str, usage.Observer]:
        """How the load runner observes each running server, by name: a step's CPU and memory
        are the target's own (natively, the process trees `serve` started; in Docker, the
        engine's stats of the service's containers), and a container that restarts is coming
        back, not gone."""
        pids: dict[str, list[int]] = {}
        for record in self.processes:
            if record.alive() and record.name in targets.targets():
                pids.setdefault(record.name, []).append(record.pid)
        found = {name: usage.Observer(usage.process_tree_usage(p)) for name, p in pids.items()}
        for server in self.servers:
            if server.mode == "docker" and server.status == "up":
                service = targets.get(server.name).compose_service
                containers = compose_containers(service)
                found[server.name] = usage.Observer(
                    usage.container_usage([c.id for c in containers]),
                    lambda service=service: any(c.status in ("running", "restarting")
                                                for c in compose_containers(service, True)))
        return found

    def save(self, directory: Path | None = None) -> Path:
        path = (directory or state_dir()) / STATE_FILE
        atomic_write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, directory: Path | None = None) -> Deployment | None:
        path = (directory or state_dir()) / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        data["servers"] = [ServerStatus(**s) for s in data["servers"]]
        data["processes"] = [processes.ProcessRecord(**p) for p in data["processes"]]
        return cls(**data)


def check_answers(deployment: Deployment, server: str, root: Path) -> None:
    """A real prediction on golden samples, compared with the reference, for every model."""
    endpoints = deployment.endpoints_obj()
    for model in deployment.models:
        manifest = load_manifest(root, model)
        golden = Golden.load(root / manifest.golden["path"])
        rows = min(4, manifest.max_rows)  # a few golden samples, in one request the model allows
        for protocol in targets.get(server).protocol_names:
            client = make_client(server, protocol, model, endpoints,
                                 manifest.inputs[0].name, manifest.outputs[0].name)
            try:
                outputs = client.predict(golden.inputs[:rows])
            finally:
                client.close()
            ok, why = matches_reference(outputs, golden.outputs[:rows], FP32_TOLERANCE)
            if not ok:
                raise PredictionError(f"{server} {protocol} answers {model} wrongly: {why}")


def wait_ready(deployment: Deployment, server: str, root: Path,
               record: processes.ProcessRecord | None, timeout: float) -> None:
    endpoints = deployment.endpoints_obj()
    clients = [make_client(server, protocol, model, endpoints)
               for model in deployment.models for protocol in targets.get(server).protocol_names]

    def ready() -> bool:
        if record is not None and not record.alive():
            raise DeploybenchError(
                f"{server} exited while starting: {processes.log_tail(record.log)}"
            )
        return all(client.ready() for client in clients)

    try:
        if not processes.wait_until(ready, timeout):
            raise DeploybenchError(f"{server} not ready after {timeout:.0f} s")
    finally:
        for client in clients:
            client.close()
    check_answers(deployment, server, root)


def serve(root: Path, mode: str | None = None, models: list[str] | None = None,
          run_dir: Path | None = None, endpoints: Endpoints | None = None,
          servers: tuple[str, ...] | None = None,
          settings: ServerSettings | None = None, timeout: float = READY_TIMEOUT_S,
          log=print, overrides: dict[str, dict[str, str]] | None = None,  # noqa: ANN001
          cpus: str | None = None, profile: Profile | None = None,
          ) -> Deployment:
    """Start the servers (default: every registered target) and return once each answers
    golden samples correctly.

    `overrides` gives, per server, lines of its config to override, native mode only (e.g.
    {"torchserve": {"enable_model_api": "true"}} to register a new model version on a
    loopback server). `profile` gives, per server, its own knob values (serving/profile.py):
    the compose stack reads one .env for every server, so a profile runs them natively."""
    servers = targets.parse_targets("all") if servers is None else servers
    if profile is not None and profile.servers:
        if mode == "docker":
            raise UsageError("--profile gives each server its own settings, which the compose "
                             "stack's one .env cannot: use --mode native")
        mode = "native"
    root = root.resolve()
    existing = Deployment.load()
    if existing and any(processes.group_members(p) for p in existing.processes):
        raise DeploybenchError(
            f"servers from an earlier `deploybench serve` are still running "
            f"({existing.run_dir}); run `deploybench stop` first"
        )
    from deploybench.manifest import exported_models

    models = models or exported_models(root)
    if not models:
        raise DeploybenchError(f"{root}: no exported models; run `deploybench export` first")
    # a server whose artifact an optional converter could not write (kserve-onnxruntime
    # without an ONNX export) is a row with that reason; the others still start
    unexported: dict[str, str] = {}
    for model in models:
        manifest = load_manifest(root, model)
        for server in servers:
            fmt = targets.get(server).artifact_format
            artifact = next((a for a in manifest.artifacts if a.format == fmt), None)
            if fmt and artifact is None:  # a model of one framework (a user's): not this one
                unexported.setdefault(server, f"{model} has no {fmt} artifact (a model of "
                                              f"{' and '.join(manifest.frameworks)} only)")
            elif fmt and artifact is not None and artifact.status != "ok":
                unexported.setdefault(server, f"{model}: {fmt} was not exported "
                                              f"({artifact.status}: {artifact.reason})")
        verify_artifacts(root, manifest, [targets.get(s).artifact_format for s in servers
                                          if s not in unexported])
    servers = tuple(s for s in servers if s not in unexported)
    settings = settings or load_settings()
    if mode not in (None, "docker", "native"):  # before anything is written
        raise DeploybenchError(f"unknown mode {mode!r}: docker or native")
    if overrides and mode != "native":
        raise DeploybenchError("server config overrides apply to native mode only")
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    run_dir = (run_dir or Path("runs") / f"serve-{stamp}").resolve()
    # --mode docker with no engine answering: as root, a dockerd of our own, which `stop` stops
    started_engine = None
    if mode == "docker" and not engine.engine_available()[0]:
        run_dir.mkdir(parents=True, exist_ok=True)
        started_engine = engine.start_dockerd(run_dir / "dockerd.log")
        log(f"started dockerd (pid {started_engine.pid}); `deploybench stop` stops it")
    try:
        in_docker, natively, why_not_docker = _plan_modes(mode, root, servers, log)
    except BaseException:
        if started_engine is not None:
            processes.stop(started_engine, grace_seconds=30)
        raise
    mode = "+".join(m for m, chosen in (("docker", in_docker), ("native", natively)) if chosen)
    run_dir.mkdir(parents=True, exist_ok=True)
    endpoints = endpoints or loopback_endpoints()
    deployment = Deployment(mode, str(root), models, str(run_dir), endpoints.to_dict(),
                            settings.to_dict(), profile=profile.source if profile else "")
    if started_engine is not None:
        deployment.processes.append(started_engine)
    for server, reason in why_not_docker.items():
        if server not in natively:  # --mode docker: no native fallback
            deployment.servers.append(ServerStatus(server, "unavailable", reason, "docker"))
    for server, reason in unexported.items():
        deployment.servers.append(ServerStatus(server, "unavailable", reason))
    try:
        if in_docker:
            deployment.configurations |= {s: knob_values(settings, s) for s in in_docker}
            _serve_docker(deployment, root, in_docker, timeout, log)
        if natively:
            _serve_native(deployment, root, natively, settings, timeout, log, why_not_docker,
                          overrides or {}, cpus, profile)
    except BaseException:
        stop(deployment)
        raise
    deployment.save()
    return deployment


def _plan_modes(mode: str | None, root: Path, servers: tuple[str, ...], log,  # noqa: ANN001
                ) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, str]]:
    """Which servers run in Docker and which natively, and why each that does not run in
    Docker cannot. With no mode given: Docker when an engine answers, for each server whose
    image the engine has or can pull; the others natively (an air-gapped engine, images not
    built), each named in one line with how to get its image."""
    if mode == "native":
        return (), servers, {}
    available, no_engine = engine.engine_available()
    if not available:
        if mode == "docker":
            raise DeploybenchError(f"--mode docker: {no_engine}; use --mode native")
        return (), servers, dict.fromkeys(servers, no_engine)
    why_not = {s: "no compose service" for s in servers if not targets.get(s).compose_service}
    services = {s: targets.get(s).compose_service for s in servers if s not in why_not}
    missing = missing_images(root, services)
    for server, reason in missing.items():
        why_not[server] = reason
        log(f"{server}: {reason}" + ("" if mode == "docker" else "; serving it natively"))
    in_docker = tuple(s for s in servers if s not in why_not)
    if mode == "docker" and not in_docker:
        raise DeploybenchError("--mode docker: no server can run in Docker here: "
                               + "; ".join(f"{s}: {why}" for s, why in why_not.items()))
    natively = () if mode == "docker" else tuple(s for s in servers if s in why_not)
    return in_docker, natively, why_not


def compose_images(root: Path, services: list[str], profile: str | None = None,
                   ) -> dict[str, tuple[str, bool]]:
    """Each service's image as compose resolves it (.env and the environment applied), and
    whether compose can build it (a `build:` section)."""
    import yaml

    result = _compose(str(root), *(("--profile", profile) if profile else ()), "config")
    if result.returncode != 0:
        raise DeploybenchError(f"docker compose config failed: {result.stderr.strip()[-500:]}")
    config = yaml.safe_load(result.stdout)["services"]
    return {s: (config[s]["image"], "build" in config[s]) for s in services}


def missing_images(root: Path, services: dict[str, str]) -> dict[str, str]:
    """By server: one line for each image that the Docker engine neither holds nor can pull
    (compose would try to pull it, and fail the whole stack), saying how to get it."""
    from docker.errors import ImageNotFound

    import docker

    images = compose_images(root, sorted(set(services.values())))
    client = docker.from_env(timeout=10)
    missing: dict[str, str] = {}
    try:
        for server, service in services.items():
            image, buildable = images[service]
            try:
                client.images.get(image)
                continue
            except ImageNotFound:
                pass
            try:
                client.images.get_registry_data(image)  # the registry has it: compose pulls it
                continue
            except Exception as error:  # no registry reachable, or not on it
                # the engine's own words (an APIError's explanation), not the HTTP wrapping
                why = str(getattr(error, "explanation", None) or error).splitlines()[0][:200]
            how = (f"`docker compose build {service}` builds it" if buildable
                   else f"`docker pull {image}` where a registry is reachable")
            missing[server] = (f"image {image} is not on this Docker engine and cannot be pulled "
                               f"({why}): {how}")
    finally:
        client.close()
    return missing


def _serve_native(deployment: Deployment, root: Path, servers: tuple[str, ...],
                  settings: ServerSettings, timeout: float, log,  # noqa: ANN001
                  why_not_docker: dict[str, str] | None = None,
                  overrides: dict[str, dict[str, str]] | None = None,
                  cpus: str | None = None, profile: Profile | None = None) -> None:
    run_dir = Path(deployment.run_dir)
    endpoints = deployment.endpoints_obj()
    started: list[tuple[str, processes.ProcessRecord]] = []
    for server in servers:
        folder = run_dir / server
        folder.mkdir(exist_ok=True)
        target = targets.get(server)
        try:
            if target.native is None:
                raise native.ServerUnavailable(f"{target.label} has no native start here")
            own = profile.settings_for(settings, server) if profile else settings
            deployment.configurations[server] = knob_values(own, server)
            command, env = target.native(native.NativeSetup(
                folder, root, deployment.models, own, endpoints.of(server),
                (overrides or {}).get(server, {})))
        except native.ServerUnavailable as error:
            no_docker = (why_not_docker or {}).get(server)
            reason = f"{no_docker}, and {error}" if no_docker else str(error)
            deployment.servers.append(ServerStatus(server, "unavailable", reason, "native"))
            log(f"{server}: unavailable: {reason}")
            continue
        _, record = processes.launch(server, pinned(command, cpus),
                                     folder / f"{server}.log", folder, env)
        deployment.processes.append(record)
        deployment.save()  # recorded at once: `stop` must find it even if we die waiting
        started.append((server, record))
    for server, record in started:
        try:
            wait_ready(deployment, server, root, record, timeout)
        except DeploybenchError as error:
            processes.stop(record)
            deployment.servers.append(ServerStatus(server, "failed", str(error), "native"))
            log(f"{server}: failed: {error}")
            continue
        deployment.servers.append(ServerStatus(server, "up", mode="native"))
        log(f"{server}: up, answering correctly ({run_dir / server})")


def compose_containers(service: str, all_states: bool = False) -> list:
    """The containers of one service of the kit's compose project (docker SDK objects)."""
    import docker

    client = docker.from_env(timeout=10)
    try:
        return client.containers.list(all=all_states, filters={"label": [
            f"com.docker.compose.project={COMPOSE_PROJECT}",
            f"com.docker.compose.service={service}"]})
    finally:
        client.close()


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise DeploybenchError("neither `docker compose` nor `docker-compose` is installed")


def compose_invocation(root: str, *args: str, endpoints: Endpoints | None = None,
                       ) -> tuple[list[str], dict[str, str]]:
    """The command and environment of docker compose on the kit's file and project, serving
    `root`, each server's ports published where `endpoints` has them (docker-compose.yml's
    <SERVER>_<ENDPOINT>_PORT); run it from REPO_ROOT."""
    env = {**os.environ, "DEPLOYBENCH_ARTIFACTS": root}
    for target in targets.targets().values():
        if target.compose_service and endpoints is not None:
            for key, address in endpoints.of(target.name).items():
                name = f"{target.name}_{key}_PORT".upper().replace("-", "_")
                env[name] = str(targets.host_port(address)[1])
    command = [*compose_command(), "-f", str(COMPOSE_FILE), "-p", COMPOSE_PROJECT, *args]
    return command, env


def _compose(root: str, *args: str, endpoints: Endpoints | None = None,
             ) -> subprocess.CompletedProcess:
    command, env = compose_invocation(root, *args, endpoints=endpoints)
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)


def _serve_docker(deployment: Deployment, root: Path, servers: tuple[str, ...],
                  timeout: float, log) -> None:  # noqa: ANN001
    """Servers whose compose service and image are there (`_plan_modes` checked)."""
    services = {s: targets.get(s).compose_service for s in servers}
    result = _compose(deployment.root, "up", "-d", *services.values(),
                      endpoints=deployment.endpoints_obj())
    deployment.save()
    if result.returncode != 0:
        raise DeploybenchError(f"docker compose up failed: {result.stderr.strip()[-500:]}")
    for server in servers:
        try:
            wait_ready(deployment, server, root, None, timeout)
        except DeploybenchError as error:
            deployment.servers.append(ServerStatus(server, "failed", str(error), "docker"))
            log(f"{server}: failed: {error}")
            continue
        deployment.servers.append(ServerStatus(server, "up", mode="docker"))
        log(f"{server}: up, answering correctly (docker)")


def stop(deployment: Deployment | None = None) -> list[str]:
    """Stop exactly what `serve` started; returns what was stopped."""
    deployment = deployment or Deployment.load()
    if deployment is None:
        return []
    stopped = []
    if deployment.uses_compose():
        result = _compose(deployment.root, "down", "--volumes", "--remove-orphans")
        if result.returncode == 0:
            stopped.append("compose stack")
    for record in deployment.processes:
        if processes.stop(record):
            stopped.append(f"{record.name} (pid {record.pid})")
    state = state_dir() / STATE_FILE
    if state.is_file() and json.loads(state.read_text()).get("run_dir") == deployment.run_dir:
        state.unlink()
    return stopped
