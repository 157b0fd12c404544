"""Server processes started natively: launched in their own session, recorded, stopped by group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass
class ProcessRecord:
    """Enough to stop exactly the process group we started, and nothing else."""

    name: str
    pid: int
    create_time: float
    log: str

    def to_dict(self) -> dict:
        return asdict(self)

    def alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return process.create_time() == self.create_time and process.is_running() and (
                process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


def launch(name: str, command: list[str], log: Path, cwd: Path,
           env: dict[str, str] | None = None) -> tuple[subprocess.Popen, ProcessRecord]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as handle:
        process = subprocess.Popen(
            command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stop() takes the workers too
        )
    record = ProcessRecord(name, process.pid, psutil.Process(process.pid).create_time(), str(log))
    return process, record


def group_members(record: ProcessRecord) -> list[psutil.Process]:
    """Every live process of the group `record` started (its leader's pid is the group id),
    the leader included while it lives. A group id is never reused while any member lives,
    and members started after the leader: pid reuse cannot mistake a stranger for ours."""
    try:
        if psutil.Process(record.pid).create_time() != record.create_time:
            return []  # the pid is someone else's now: our group is long gone
    except psutil.Error:
        pass  # the leader is gone; members of its group may not be
    members = []
    for process in psutil.process_iter(["pid", "create_time"]):
        try:
            if (os.getpgid(process.pid) == record.pid
                    and process.info["create_time"] >= record.create_time - 0.5
                    and process.status() != psutil.STATUS_ZOMBIE):
                members.append(process)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return members


def stop(record: ProcessRecord, grace_seconds: float = 20.0) -> bool:
    """Stop the process group of `record`; True if something was running. Also when its
    leader is gone already (killed, crashed): whatever of the group survived is stopped."""
    members = group_members(record)
    if record.alive():
        try:
            members += psutil.Process(record.pid).children(recursive=True)
        except psutil.Error:
            pass
    members = list({process.pid: process for process in members}.values())
    if not members:
        return False
    try:
        os.killpg(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    _, still = psutil.wait_procs(members, timeout=grace_seconds)
    if still:
        try:
            os.killpg(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for process in still:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(still, timeout=5)
    return True


def log_tail(path: str | Path, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def wait_until(predicate, timeout: float, interval: float = 0.5) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
