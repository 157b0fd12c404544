"""Fault injection for reliability drills and tests: kill TorchServe's backend worker and
measure how long until a golden request is answered correctly again; kill a whole server; roll a
model over to a new version on a live TorchServe.

    kill = kill_torchserve_worker(endpoints, "digits-mlp", golden.inputs[:1], golden.outputs[:1])
    writer.add(kill.measurement(during="sweep 2 users"))  # the run's RunWriter (jobs/writer.py)
    writer.note(kill.note())

`during(load, fault, delay_s)` runs a fault on a timer while `load()` (a locust step, a whole
`LoadRun`) runs in the calling thread, so the load's own counts show what the fault cost.
Recovery is measured as a client sees it: from the kill to the first golden request, sent after
the kill, that comes back correct (requests sent meanwhile wait in TorchServe's queue for the new
worker or fail, e.g. 507 "Worker died"), and the management API must then show a new READY worker.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import psutil
import requests

from deploybench.errors import DeploybenchError
from deploybench.manifest import FP32_TOLERANCE
from deploybench.records import ContainerCrashRecord, RolloverRecord, WorkerKillRecord
from deploybench.serving.clients import PredictClient, TorchServeREST
from deploybench.serving.payload import PredictionError, matches_reference
from deploybench.serving.processes import ProcessRecord
from deploybench.serving.targets import Endpoints

RECOVERY_TIMEOUT_S = 120.0
T = TypeVar("T")


class FaultError(DeploybenchError):
    """The fault could not be injected (no such worker, no management API)."""


def torchserve_workers(management_url: str, model: str, timeout: float = 5.0
                       ) -> list[dict[str, Any]]:
    """The workers of `model`'s versions on TorchServe's management API (id, pid, status)."""
    url = f"{management_url.rstrip('/')}/models/{model}/all"
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as error:
        raise FaultError(f"cannot reach TorchServe's management API at {url}: {error}") from None
    if response.status_code != 200:
        raise FaultError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return [{**worker, "version": version.get("modelVersion")}
            for version in response.json() for worker in version.get("workers", [])]


def ready_pids(management_url: str, model: str) -> set[int]:
    return {int(w["pid"]) for w in torchserve_workers(management_url, model)
            if w.get("status") == "READY" and w.get("pid")}


@dataclass
class WorkerKill:
    """One killed TorchServe worker and how TorchServe came back from it."""

    model: str
    signal: str
    killed_pid: int
    killed_at: float  # wall clock, seconds since the epoch
    recovery_s: float | None = None  # kill -> first golden answer, correct, sent after the kill
    new_pid: int | None = None
    new_worker_spawned_s: float | None = None  # kill -> the new worker process's start (native)
    probes: int = 0  # golden requests sent until recovery
    probe_errors: dict[str, int] = field(default_factory=dict)  # their failures, by reason
    status: str = "not-recovered"  # recovered | not-recovered
    reason: str = ""

    def measurement(self, **context: Any) -> WorkerKillRecord:
        """The results.json record: kind "fault", plus `context` (the load step it hit, ...)."""
        return WorkerKillRecord(target="torchserve", **asdict(self), **context)

    def note(self) -> str:
        if self.status != "recovered":
            return (f"fault: killed torchserve worker pid {self.killed_pid}: NOT recovered: "
                    f"{self.reason}")
        return (f"fault: killed torchserve worker pid {self.killed_pid} ({self.signal}) of "
                f"{self.model}: answering correctly again after {self.recovery_s} s "
                f"(new worker pid {self.new_pid})")


def kill_torchserve_worker(
    endpoints: Endpoints, model: str, inputs: np.ndarray, outputs: np.ndarray,
    tolerance: float = FP32_TOLERANCE, sig: signal.Signals = signal.SIGKILL,
    timeout: float = RECOVERY_TIMEOUT_S, poll_s: float = 0.05,
) -> WorkerKill:
    """Kill one READY worker of `model` (its Python backend process, pid from the management
    API) and probe with golden `inputs` until TorchServe answers `outputs` again. Native mode
    only: the pid must be a TorchServe worker on this machine (in a container it is not). With
    one worker per model (the kit's setting) the first correct answer is the new worker's."""
    management = endpoints.torchserve_management
    pids = sorted(ready_pids(management, model))
    if not pids:
        raise FaultError(f"torchserve has no READY worker for {model} to kill")
    victim = pids[0]
    if not _is_worker(victim):
        raise FaultError(f"pid {victim} is not a TorchServe worker on this machine (a server in "
                         "a container? run the drill natively)")
    killed_at = time.time()
    began = time.monotonic()
    os.kill(victim, sig)
    kill = WorkerKill(model, sig.name, victim, killed_at)
    client = TorchServeREST(endpoints.torchserve_inference, management, model, timeout=timeout)
    kill.recovery_s, kill.probes, kill.probe_errors = probe_until_correct(
        client, inputs, outputs, tolerance, began, timeout, poll_s)
    workers = torchserve_workers(management, model)
    fresh = [w for w in workers if w.get("status") == "READY" and w.get("pid")
             and int(w["pid"]) != victim]
    if fresh:
        kill.new_pid = int(fresh[0]["pid"])
        if _is_worker(kill.new_pid):  # TorchServe's own startTime is its worker thread's
            kill.new_worker_spawned_s = round(
                psutil.Process(kill.new_pid).create_time() - killed_at, 3)
    if kill.recovery_s is not None and kill.new_pid is not None:
        kill.status = "recovered"
    else:
        kill.reason = (f"no correct answer within {timeout:g} s" if kill.recovery_s is None
                       else f"no new READY worker (workers: {workers})")
    return kill


def probe_until_correct(client: PredictClient, inputs: np.ndarray, outputs: np.ndarray,
                        tolerance: float, began: float, timeout: float, poll_s: float,
                        ) -> tuple[float | None, int, dict[str, int]]:
    """Send golden `inputs` until the answer matches `outputs`: (seconds from `began`, a
    monotonic time, to that answer or None after `timeout`; probes sent; their failures by
    reason). Closes `client`."""
    probes, errors = 0, {}
    try:
        while time.monotonic() - began < timeout:
            probes += 1
            try:
                ok, why = matches_reference(client.predict(inputs), outputs, tolerance)
            except PredictionError as error:
                ok, why = False, str(error)
            if ok:
                return round(time.monotonic() - began, 3), probes, errors
            errors[why[:200]] = errors.get(why[:200], 0) + 1
            time.sleep(poll_s)
    finally:
        client.close()
    return None, probes, errors


@dataclass
class ContainerCrash:
    """A server container whose processes were all killed at once, and how it came back."""

    service: str
    model: str
    container: str
    killed_at: float  # wall clock
    exit_code: int | None = None
    restarts: int = 0
    recovery_s: float | None = None  # kill -> first golden answer, correct, sent after the kill
    probes: int = 0
    probe_errors: dict[str, int] = field(default_factory=dict)
    status: str = "not-recovered"
    reason: str = ""

    def measurement(self, target: str, **context: Any) -> ContainerCrashRecord:
        return ContainerCrashRecord(target=target, **asdict(self), **context)

    def note(self) -> str:
        if self.status != "recovered":
            return f"fault: crashed the {self.service} container: NOT recovered: {self.reason}"
        return (f"fault: crashed the {self.service} container (exit {self.exit_code}): its "
                f"restart policy restarted it, answering correctly again after "
                f"{self.recovery_s} s")


def crash_container(service: str, client: PredictClient, inputs: np.ndarray,
                    outputs: np.ndarray, tolerance: float = FP32_TOLERANCE,
                    timeout: float = RECOVERY_TIMEOUT_S, poll_s: float = 0.1) -> ContainerCrash:
    """Kill every process of `service`'s container at once, as a crash or the kernel's OOM
    killer would (SIGKILL from inside, to all but its init, which then exits with the server's
    status), and probe with `client` until it answers `outputs` again. Not `docker kill`: Docker
    counts that as an operator's stop, which no restart policy undoes."""
    from deploybench.serving.manager import compose_containers

    running = compose_containers(service)
    if not running:
        raise FaultError(f"no running container of compose service {service}")
    container = running[0]
    restarts_before = container.attrs["RestartCount"]
    began, killed_at = time.monotonic(), time.time()
    result = container.exec_run(["/bin/bash", "-c", "kill -KILL -1"])
    if result.exit_code not in (0, None, 137, -1):  # the exec's own shell may die with the rest
        raise FaultError(f"could not kill the processes of {container.name}: "
                         f"{result.output.decode(errors='replace')[:200]}")
    crash = ContainerCrash(service, client.model, container.name, killed_at)
    crash.recovery_s, crash.probes, crash.probe_errors = probe_until_correct(
        client, inputs, outputs, tolerance, began, timeout, poll_s)
    container.reload()
    crash.restarts = container.attrs["RestartCount"] - restarts_before
    # the exit status as the engine saw it die (a restarted container's own state is fresh)
    for event in container.client.events(since=int(killed_at) - 1, until=int(time.time()) + 1,
                                         decode=True, filters={"container": container.id,
                                                               "event": "die"}):
        crash.exit_code = int(event["Actor"]["Attributes"].get("exitCode", -1))
    if crash.recovery_s is not None and crash.restarts >= 1:
        crash.status = "recovered"
    else:
        crash.reason = (f"no correct answer within {timeout:g} s" if crash.recovery_s is None
                        else "answered, but the engine shows no restart (was it killed?)")
    return crash


def _is_worker(pid: int) -> bool:
    try:
        return "model_service_worker" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def kill_server(record: ProcessRecord, sig: signal.Signals = signal.SIGKILL) -> None:
    """Kill the whole process group `serve` recorded (launcher, JVM, workers) at once."""
    if not record.alive():
        raise FaultError(f"{record.name} (pid {record.pid}) is not running")
    os.killpg(record.pid, sig)


def during(load: Callable[[], T], fault: Callable[[], Any], delay_s: float
           ) -> tuple[T, Any]:
    """Run `load()` here and `fault()` in a thread `delay_s` seconds after the start; returns
    both outcomes once both ended (the fault's exception is raised after the load's end)."""
    outcome: dict[str, Any] = {}

    def inject() -> None:
        time.sleep(delay_s)
        try:
            outcome["fault"] = fault()
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=inject, name="fault-injection", daemon=True)
    thread.start()
    try:
        result = load()
    finally:
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return result, outcome.get("fault")


@dataclass
class Rollover:
    """A new model version registered, made the default and the old one removed, live."""

    model: str
    old_version: str
    new_version: str
    mar: str
    started_at: float  # wall clock
    registered_s: float | None = None  # start -> the new version registered, its worker READY
    default_s: float | None = None  # start -> the new version is the default
    finished_at: float | None = None  # wall clock: the old version unregistered
    steps: list[str] = field(default_factory=list)

    def measurement(self, **context: Any) -> RolloverRecord:
        return RolloverRecord(target="torchserve", **asdict(self), **context)

    def note(self) -> str:
        if self.finished_at is None:
            return f"rollover: {self.model} to {self.new_version} unfinished"
        return (f"rollover: {self.model} {self.old_version} -> {self.new_version} ({self.mar}) "
                f"in {self.finished_at - self.started_at:.1f} s: " + "; ".join(self.steps))


def rollover_torchserve(management_url: str, model: str, mar: str, new_version: str,
                        old_version: str, batch_size: int = 1, max_batch_delay_ms: int = 5,
                        response_timeout_s: int = 120, timeout: float = 120.0,
                        drain_s: float = 1.0) -> Rollover:
    """Register `mar` (a file in the model store) as `new_version` with one worker, wait until
    it is READY, make it the default, let the old version drain, then unregister it.
    TorchServe's model API must be on (enable_model_api=true): the hardened config turns it off,
    see the README.

    TorchServe unregisters a version at once, killing its worker with whatever it is running
    ("Worker died" for that request), so the old version gets no new work after set-default and
    is removed only once its queue is empty and `drain_s` has let in-flight requests finish."""
    base = management_url.rstrip("/")
    done = Rollover(model, old_version, new_version, mar, time.time())
    began = time.monotonic()

    def call(method: str, path: str, **params: Any) -> None:
        response = requests.request(method, base + path, params=params or None, timeout=timeout)
        if response.status_code != 200:
            raise FaultError(f"{method} {base}{path} answered {response.status_code}: "
                             f"{response.text.strip()[:200]}")
        done.steps.append(f"{method} {path} -> 200")

    # the same per-model settings as the config's `models` line, or TorchServe's defaults apply
    call("POST", "/models", url=mar, initial_workers=1, synchronous="true",
         batch_size=batch_size, max_batch_delay=max_batch_delay_ms,
         response_timeout=response_timeout_s)
    done.registered_s = round(time.monotonic() - began, 3)
    call("PUT", f"/models/{model}/{new_version}/set-default")
    done.default_s = round(time.monotonic() - began, 3)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = requests.get(f"{base}/models/{model}/{old_version}", timeout=timeout).json()
        if all(v.get("jobQueueStatus", {}).get("pendingRequests", 0) == 0 for v in described):
            break
        time.sleep(0.1)
    time.sleep(drain_s)
    call("DELETE", f"/models/{model}/{old_version}")
    done.finished_at = time.time()
    return done
