"""One headless locust run as its own process (never inside a TensorFlow/torch process: gevent
and their runtimes do not mix), with every file it writes kept in the run folder."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploybench.fresh import pinned
from deploybench.serving import targets
from deploybench.serving.targets import Endpoints

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
STARTUP_ALLOWANCE_S = 90.0  # locust's start, the users' spawn and its reports, at most
CPU_WARNING_TEXT = "CPU usage above"  # locust's own warning when its process passes 90 %


@dataclass
class LocustRun:
    """The arguments of one measurement step."""

    target: str
    protocol: str
    model: str
    export_root: Path
    endpoints: Endpoints
    users: int
    warmup_seconds: float
    measure_seconds: float
    prefix: Path  # every file of this step: <prefix>_stats.csv, <prefix>.html, ...
    rate_per_user: float = 0.0
    batch_size: int = 1
    extra_args: list[str] = field(default_factory=list)
    cpus: str | None = None  # taskset CPU list: keep the load generator off the server's cores
    # > 0: a master and this many workers through compose's loadtest profile (loadtest/compose.py)
    workers: int = 0
    # the server's Prometheus metrics page, read as the window opens and closes ("": none)
    metrics_url: str = ""

    @classmethod
    def at(cls, url: str, target: str, protocol: str, **fields: Any) -> LocustRun:
        """A step of `target`'s `protocol` user class pointed at one address (a replay
        endpoint, or a server started apart from any deployment)."""
        endpoint = targets.get(target).protocol(protocol).endpoint
        return cls(target=target, protocol=protocol,
                   endpoints=Endpoints({f"{target}_{endpoint}": url}), **fields)

    @property
    def user_class(self) -> str:
        return targets.get(self.target).protocol(self.protocol).locust_user

    def address_options(self) -> list[str]:
        """The locustfile options that point it at this target (from the registry)."""
        target = targets.get(self.target)
        addresses = self.endpoints.of(self.target)
        return [argument for endpoint in target.endpoints if endpoint.locust_option
                for argument in (f"--{endpoint.locust_option}", addresses[endpoint.key])]

    def files(self) -> dict[str, Path]:
        base = str(self.prefix)
        return {
            "csv_stats": Path(f"{base}_stats.csv"),
            "csv_history": Path(f"{base}_stats_history.csv"),
            "csv_failures": Path(f"{base}_failures.csv"),
            "csv_exceptions": Path(f"{base}_exceptions.csv"),
            "html": Path(f"{base}.html"),
            "json": Path(f"{base}.json"),
            "log": Path(f"{base}.log"),
            "summary": Path(f"{base}.summary.json"),
        }

    def arguments(self, prefix: str, export_root: str, addresses: bool = True) -> list[str]:
        """locust's options for this step, its files under `prefix`."""
        backstop = math.ceil(self.warmup_seconds + self.measure_seconds + 30)
        return [
            "--headless", "--only-summary",
            "--users", str(self.users), "--spawn-rate", str(self.users),
            "--run-time", f"{backstop}s",  # a backstop: the locustfile ends the run itself
            "--exit-code-on-error", "0",  # failures are figures here, not a crash
            "--csv", prefix, "--html", f"{prefix}.html", "--json-file", prefix,
            "--export-root", export_root, "--model", self.model,
            "--batch-size", str(self.batch_size),
            *(self.address_options() if addresses else []),
            # the host's addresses only: compose's master reaches the servers by service name
            *(["--metrics-url", self.metrics_url] if addresses and self.metrics_url else []),
            "--warmup-seconds", f"{self.warmup_seconds:g}",
            "--measure-seconds", f"{self.measure_seconds:g}",
            "--rate-per-user", f"{self.rate_per_user:g}",
            "--summary-file", f"{prefix}.summary.json",
            *self.extra_args,
        ]

    def command(self) -> list[str]:
        return pinned([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
                       *self.arguments(str(self.prefix), str(self.export_root)),
                       self.user_class], self.cpus)


@dataclass
class LocustOutput:
    returncode: int
    summary: dict[str, Any] | None
    log_text: str
    seconds: float
    files: dict[str, Path]
    aborted: str | None = None  # why the step was stopped early (the server went away)

    @property
    def cpu_warning_logged(self) -> bool:
        return CPU_WARNING_TEXT in self.log_text

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log_text.strip().splitlines()[-lines:])


def run_locust(run: LocustRun, tick: Callable[[float], None] | None = None,
               poll_seconds: float = 0.2,
               watch: Callable[[], str | None] | None = None) -> LocustOutput:
    """Run locust headless and wait for it; `tick(elapsed_seconds)` while it runs. When
    `watch()` returns a reason (the server is gone), locust is stopped at once (it still writes
    what it measured) and the output carries that reason."""
    files = run.files()
    run.prefix.parent.mkdir(parents=True, exist_ok=True)
    for path in files.values():
        path.unlink(missing_ok=True)
    limit = run.warmup_seconds + run.measure_seconds + STARTUP_ALLOWANCE_S
    command, env = run.command(), {**os.environ, "PYTHONUNBUFFERED": "1"}
    distributed = None
    if run.workers:
        from deploybench.loadtest.compose import ComposeLocust

        distributed = ComposeLocust(run)
        command, env = distributed.master_invocation()
    start = time.monotonic()
    aborted = None
    with files["log"].open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                   cwd=distributed.cwd if distributed else None)
        try:
            if distributed is not None:
                distributed.start_workers(process, log)
            while process.poll() is None:
                elapsed = time.monotonic() - start
                if elapsed > limit:
                    _stop(process)
                    break
                if tick is not None:
                    tick(elapsed)
                aborted = watch() if watch is not None else None
                if aborted:
                    _stop(process)
                    break
                time.sleep(poll_seconds)
        except BaseException:  # interrupted: never leave a locust behind
            _stop(process)
            raise
        finally:
            if distributed is not None:  # its containers removed, its files where ours go
                distributed.finish(log)
    returncode = process.wait()
    summary = None
    if files["summary"].is_file():
        try:
            summary = json.loads(files["summary"].read_text())
        except json.JSONDecodeError:
            summary = None
    log_text = files["log"].read_text(errors="replace")
    return LocustOutput(returncode, summary, log_text, time.monotonic() - start, files, aborted)


def _stop(process: subprocess.Popen) -> None:
    """Stop the locust we started (its own process group), politely first."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
