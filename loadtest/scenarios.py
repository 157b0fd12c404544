"""Load-test scenarios as data: what to run is a value, never a code path.

Two kinds, after MLPerf LoadGen and Triton's perf_analyzer:

closed  N users, each sends its next request when its answer arrives (a concurrency sweep).
        Simple and standard, but it sends fewer requests exactly when the server stalls, so it
        understates tails (coordinated omission).
open    Poisson arrivals at a target rate, whatever the answers do; latency counts from each
        request's scheduled send time (as wrk2 does), and the run reports scheduled versus
        completed rate. With a `search`, the rate steps up until a step fails (p99 over the
        bound, failures, or answers falling behind), then bisects: the result is the highest
        rate whose p99 stays under the bound (MLPerf's Server scenario).

Built in: `sweep` (1, 2, 4, 8, 16, 32 users) and `rate` (the SLO search). A JSON or YAML file
with the same fields defines another, e.g.

    {"name": "slo-50ms", "kind": "open", "rate_bound_ms": 50, "step_seconds": 8,
     "search": {"start_rps": 50, "growth": 2, "max_rps": 2000, "refine_steps": 3}}
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploybench.errors import UsageError

KINDS = ("closed", "open")


@dataclass(frozen=True)
class RateSearch:
    start_rps: float = 25.0
    growth: float = 2.0  # step-up factor until a step fails
    max_rps: float = 3200.0
    min_rps: float = 0.5  # step down (when the start fails) no lower than this
    refine_steps: int = 3  # bisection steps between the last pass and the first failure
    min_gap: float = 0.05  # stop bisecting once the bracket is this narrow (relative)


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # closed | open
    levels: tuple[float, ...] = ()  # users (closed) or rates in requests/s (open, no search)
    step_seconds: float = 10.0
    warmup_seconds: float = 3.0
    rate_bound_ms: float = 100.0  # open: the p99 bound a step must meet to pass
    search: RateSearch | None = None  # open: search the highest passing rate
    open_loop_users: int = 1  # open: Poisson processes the rate is split over
    min_completed_ratio: float = 0.95  # open: completed/scheduled below this = fell behind
    # open: a step lasts until about this many requests are scheduled, so that its p99 rests on
    # a few of them rather than on the single slowest (at most 4 x step_seconds)
    min_requests: int = 0
    batch_size: int = 1  # golden rows per request
    # open: early stopping. Each step lasts until its p99's 95% interval lies wholly under the
    # bound (pass, on at least min_pass_requests, MLPerf's 662 for a p99 claim, and at least
    # step_seconds: a backlog needs time to show) or wholly over it (fail, at once), or
    # max_step_seconds have passed (inconclusive; longer at a rate too low to send
    # min_pass_requests in it: see measure_seconds)
    early_stop: bool = False
    min_pass_requests: int = 662
    max_step_seconds: float = 60.0
    # SLO gates decided on every step, e.g. "p99<=100ms,error_rate<=0.1%" (deploybench/slo.py);
    # a file may give them as a list
    slo: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"scenario {self.name!r}: kind must be one of {KINDS}")
        if self.kind == "closed" and not self.levels:
            raise UsageError(f"scenario {self.name!r}: a closed-loop sweep needs user levels")
        if self.kind == "closed" and any(level < 1 or level != int(level)
                                         for level in self.levels):
            raise UsageError(f"scenario {self.name!r}: user levels are whole numbers >= 1")
        if self.kind == "open" and not self.levels and self.search is None:
            raise UsageError(f"scenario {self.name!r}: an open-loop scenario needs rates "
                             "(levels) or a search")
        if any(level <= 0 for level in self.levels):
            raise UsageError(f"scenario {self.name!r}: levels must be positive")
        if self.step_seconds <= 0 or self.warmup_seconds < 0 or self.min_requests < 0:
            raise UsageError(f"scenario {self.name!r}: step seconds > 0, warm-up seconds "
                             ">= 0, min_requests >= 0")
        if self.slo:
            from deploybench.slo import parse

            parse(self.slo)  # a malformed gate fails here, before any load
        search = self.search
        if search and not (search.growth > 1 and 0 < search.min_rps <= search.start_rps
                           <= search.max_rps and search.refine_steps >= 0):
            raise UsageError(f"scenario {self.name!r}: the search needs growth > 1 and "
                             "0 < min_rps <= start_rps <= max_rps, refine_steps >= 0")

    def measure_seconds(self, level: float) -> float:
        """How long the step at `level` is measured (see min_requests)."""
        if self.kind == "open" and self.early_stop:
            # the most it lasts (it ends once decided), and long enough at this rate for the
            # requests a pass needs, up to 4 x max_step_seconds
            return max(self.max_step_seconds,
                       min(1.25 * self.min_pass_requests / level, 4 * self.max_step_seconds))
        if self.kind != "open" or not self.min_requests:
            return self.step_seconds
        return min(max(self.step_seconds, self.min_requests / level), 4 * self.step_seconds)

    @property
    def level_unit(self) -> str:
        return "users" if self.kind == "closed" else "rps"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


BUILTIN: dict[str, Scenario] = {
    "sweep": Scenario("sweep", "closed", levels=(1, 2, 4, 8, 16, 32)),
    "rate": Scenario("rate", "open", step_seconds=6.0, warmup_seconds=2.0,
                     search=RateSearch()),
}


def from_dict(data: dict[str, Any]) -> Scenario:
    data = dict(data)
    known = {f.name for f in dataclasses.fields(Scenario)}
    unknown = set(data) - known
    if unknown:
        raise UsageError(f"unknown scenario field(s) {sorted(unknown)}; known: {sorted(known)}")
    if isinstance(data.get("search"), dict):
        try:
            data["search"] = RateSearch(**data["search"])
        except TypeError as error:
            raise UsageError(f"scenario search: {error}") from None
    if isinstance(data.get("slo"), list):
        data["slo"] = ",".join(str(gate) for gate in data["slo"])
    data["levels"] = tuple(float(x) if data.get("kind") == "open" else int(x)
                           for x in data.get("levels", ()))
    try:
        return Scenario(**data)
    except TypeError as error:
        raise UsageError(f"scenario: {error}") from None


def load_scenario(name_or_path: str, **overrides: Any) -> Scenario:
    """A built-in scenario by name, or one from a JSON/YAML file; `overrides` (None = keep)
    replace fields, e.g. levels from --users."""
    if name_or_path in BUILTIN:
        scenario = BUILTIN[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"unknown scenario {name_or_path!r}: one of "
                             f"{', '.join(BUILTIN)}, or a JSON/YAML scenario file")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as error:  # yaml and json raise their own kinds
            raise UsageError(f"{path}: not a scenario file ({error})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path}: a scenario is a mapping of fields")
        data.setdefault("name", path.stem)
        scenario = from_dict(data)
    changes = {key: value for key, value in overrides.items() if value is not None}
    if "levels" in changes:
        changes["levels"] = tuple(changes["levels"])
        if scenario.kind == "open":
            changes["search"] = None  # explicit rates replace the search
    return dataclasses.replace(scenario, **changes) if changes else scenario


@dataclass
class SearchOutcome:
    best_rps: float | None  # the highest rate that passed (None: even the first failed)
    first_failed_rps: float | None
    tried: list[tuple[float, bool]] = field(default_factory=list)
    stopped_by: str = ""  # why the search ended


def search_start(steps: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Where each server's rate search starts, from closed-loop steps already measured: half
    the busiest rate any of its clean steps reached (a rate under a latency bound can only be
    lower than what a closed loop keeps busy, and half of it usually passes), to two
    significant figures. The search then climbs from there rather than from its fixed start,
    sparing the steps far below the server's capacity."""
    busiest: dict[tuple[str, str], float] = {}
    for m in steps:
        if (m.get("status") == "ok" and m.get("level_unit") == "users"
                and m.get("throughput_rps") and not m.get("failures")
                and not m.get("wrong_answers")):
            key = (m["target"], m["model"])
            busiest[key] = max(busiest.get(key, 0.0), m["throughput_rps"])
    return {key: float(f"{rate / 2:.2g}") for key, rate in busiest.items() if rate / 2 >= 1}


def search_rate(search: RateSearch, passes: Callable[[float], bool]) -> SearchOutcome:
    """Step up by `growth` from `start_rps` until a rate fails (or `max_rps`); when the first
    rate already fails, step down by `growth` until one passes (or `min_rps`). Then bisect
    between the highest passing and the lowest failing rate."""
    outcome = SearchOutcome(None, None)

    def attempt(rate: float) -> bool:
        ok = passes(rate)
        outcome.tried.append((rate, ok))
        return ok

    rate = search.start_rps
    if attempt(rate):
        outcome.best_rps = rate
        while rate < search.max_rps:
            rate = min(round(rate * search.growth, 2), search.max_rps)  # no float noise
            if not attempt(rate):
                outcome.first_failed_rps = rate
                break
            outcome.best_rps = rate
        else:
            outcome.stopped_by = f"reached max_rps {search.max_rps:g}"
            return outcome
    else:
        outcome.first_failed_rps = rate
        while outcome.best_rps is None:
            rate = round(rate / search.growth, 2)
            if rate < search.min_rps:
                outcome.stopped_by = (f"every rate from {search.start_rps:g} down to "
                                      f"{outcome.first_failed_rps:g} rps failed")
                return outcome
            if attempt(rate):
                outcome.best_rps = rate
            else:
                outcome.first_failed_rps = rate
    low, high = outcome.best_rps, outcome.first_failed_rps
    for _ in range(search.refine_steps):
        if high / low - 1 < search.min_gap:
            break
        middle = round((low + high) / 2, 1)
        if attempt(middle):
            low = outcome.best_rps = middle
        else:
            high = outcome.first_failed_rps = middle
    outcome.stopped_by = f"bracketed between {low:g} and {high:g} rps"
    return outcome
