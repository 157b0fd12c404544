"""Tuned profiles: each server's knob values (serving/targets.py `Target.knobs`), as
`deploybench tune` found them best; `serve`, `load`, `run` and `bench` take one with
`--profile FILE`, and every server it names runs with its own values instead of .env's.

    {"schema": "deploybench.profile/1", "model": "mobilenet-v2", "slo": "p99<=100ms",
     "servers": {"torchserve": {"batching": true, "max_batch_size": 4, "workers": 1}}}

A server the profile does not name runs with .env's settings. A profile naming an unknown
server, an unknown knob or a value out of its range is refused in one line, before anything
starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from deploybench.errors import UsageError
from deploybench.files import atomic_write_text
from deploybench.serving import targets
from deploybench.settings import ServerSettings

SCHEMA = "deploybench.profile/1"
Values = dict[str, int | bool]


@dataclass(frozen=True)
class Profile:
    servers: dict[str, Values]
    model: str = ""
    slo: str = ""
    # what the tuner measured for each server at these values (its rate under the bound)
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""  # the file it was read from

    def settings_for(self, settings: ServerSettings, server: str) -> ServerSettings:
        """`settings` with this profile's values for `server` (unnamed servers: unchanged)."""
        return replace(settings, **self.servers.get(server, {}))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "model": self.model, "slo": self.slo,
                "servers": self.servers, "measured": self.measured}


def knob_values(settings: ServerSettings, server: str) -> Values:
    """The values of `server`'s knobs in `settings`: the configuration it runs with."""
    return {knob.setting: getattr(settings, knob.setting) for knob in targets.get(server).knobs}


def check_servers(servers: object, where: str) -> dict[str, Values]:
    """`servers` as a profile gives them, checked against the registry's knobs; the first
    problem is one UsageError line naming `where`, the server and the knob."""
    if not isinstance(servers, Mapping):
        raise UsageError(f"{where}: `servers` must map server names to their knob values")
    known = targets.targets()
    checked: dict[str, Values] = {}
    for server, values in servers.items():
        if server not in known:
            raise UsageError(f"{where}: unknown server {server!r}; known: {', '.join(known)}")
        target = known[server]
        if not isinstance(values, Mapping):
            raise UsageError(f"{where}: {server}: expected knob: value pairs, got {values!r}")
        for name, value in values.items():
            try:
                knob = target.knob(name)
            except UsageError as error:
                raise UsageError(f"{where}: {error}") from None
            why = knob.check(value)
            if why:
                raise UsageError(f"{where}: {server}: {name}={value!r}: {why}")
        checked[server] = dict(values)
    return checked


def load_profile(path: Path) -> Profile:
    """A profile file (JSON, or YAML), checked; a file that cannot be read or checked is one
    UsageError line."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"--profile {path}: cannot read it ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise UsageError(f"--profile {path}: not JSON or YAML "
                         f"({str(error).splitlines()[0]})") from None
    if not isinstance(data, Mapping) or "servers" not in data:
        raise UsageError(f"--profile {path}: expected an object with `servers` "
                         "(a file `deploybench tune` writes)")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise UsageError(f"--profile {path}: schema {data['schema']!r}, this kit reads {SCHEMA}")
    return Profile(servers=check_servers(data["servers"], f"--profile {path}"),
                   model=str(data.get("model") or ""), slo=str(data.get("slo") or ""),
                   measured=dict(data.get("measured") or {}), source=str(path))


def check_running(profile: Profile, configurations: Mapping[str, Values],
                  servers: list[str]) -> None:
    """That each of `servers` the profile names runs with its values (`configurations`: a
    deployment's); the first that does not is one UsageError line saying how to start it."""
    for server in servers:
        for name, value in profile.servers.get(server, {}).items():
            running = configurations.get(server, {}).get(name)
            if running != value:
                raise UsageError(
                    f"--profile {profile.source}: {server} runs with {name}={running}, the "
                    f"profile says {name}={value}; start the servers with `deploybench serve "
                    f"--profile {profile.source}`")


def write_profile(path: Path, profile: Profile) -> None:
    """The profile as JSON, written whole or not at all."""
    atomic_write_text(path, json.dumps(profile.to_dict(), indent=2) + "\n")
