"""What the running containers of the compose stack show, read with `docker inspect` (the docker
SDK) on the live containers, not on the rendered file: every hardening item docker-compose.yml
promises, one row per item and container."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from deploybench.serving import manager
from deploybench.settings import ServerSettings

MODELS_MOUNT = "/models"


@dataclass
class Check:
    service: str
    item: str
    ok: bool
    seen: str  # what the engine showed


def memory_bytes(limit: str) -> int:
    """compose's mem_limit syntax ("4g", "512m", "1024") in bytes."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*", limit.lower())
    if not found:
        raise ValueError(f"not a memory limit: {limit!r}")
    value, unit = found.groups()
    return int(float(value) * 1024 ** " kmg".index(unit or " "))


def inspect_service(service: str, settings: ServerSettings) -> list[Check]:
    """The hardening items of one service's running containers."""
    containers = manager.compose_containers(service)
    if not containers:
        return [Check(service, "running", False, "no running container")]
    checks = []
    for container in containers:
        container.reload()
        checks += _checks(service, container.attrs, container.top(ps_args="-o uid,pid,comm"),
                          settings)
    return checks


def _checks(service: str, attrs: dict[str, Any], top: dict[str, Any],
            settings: ServerSettings) -> list[Check]:
    host, config, state = attrs["HostConfig"], attrs["Config"], attrs["State"]
    bindings = [(port, b.get("HostIp", "")) for port, bound in
                (attrs["NetworkSettings"].get("Ports") or {}).items() for b in bound or []]
    uid_column = top["Titles"].index("UID")
    uids = sorted({row[uid_column] for row in top["Processes"]})
    binds = [m for m in attrs["Mounts"] if m["Type"] == "bind"]
    models = [m for m in binds if m["Destination"] == MODELS_MOUNT]
    health = (config.get("Healthcheck") or {}).get("Test") or []
    health_state = (state.get("Health") or {}).get("Status", "none")
    last_probe = ((state.get("Health") or {}).get("Log") or [{}])[-1].get("Output", "").strip()
    cpus, memory = host.get("NanoCpus", 0) / 1e9, host.get("Memory", 0)
    want_cpus, want_memory = float(settings.cpus), memory_bytes(settings.memory)
    return [
        Check(service, "ports on 127.0.0.1 only",
              bool(bindings) and all(ip == "127.0.0.1" for _, ip in bindings),
              ", ".join(f"{ip or '*'}->{port}" for port, ip in bindings) or "none published"),
        Check(service, "read-only root file system", host.get("ReadonlyRootfs") is True,
              f"ReadonlyRootfs={host.get('ReadonlyRootfs')}"),
        Check(service, "non-root user", bool(uids) and "0" not in uids,
              f"User={config.get('User') or '(image default)'}, process uids {', '.join(uids)}"),
        Check(service, "model mount read-only", bool(models) and not any(m["RW"] for m in models),
              ", ".join(f"{m['Destination']} rw={m['RW']}" for m in models) or "not mounted"),
        Check(service, "every bind mount read-only", not any(m["RW"] for m in binds),
              ", ".join(m["Destination"] for m in binds if m["RW"]) or f"{len(binds)} read-only"),
        Check(service, f"limits as .env says ({settings.cpus} CPUs, {settings.memory})",
              cpus == want_cpus and memory == want_memory,
              f"NanoCpus={cpus:g} CPUs, Memory={memory / 2**30:g} GiB"),
        Check(service, "healthcheck asks the model, healthy",
              bool(health) and health_state == "healthy",
              f"{health_state}: {last_probe[:120]}"),
        Check(service, "restart policy", host.get("RestartPolicy", {}).get("Name") in
              ("unless-stopped", "always", "on-failure"),
              host.get("RestartPolicy", {}).get("Name") or "none"),
    ]
