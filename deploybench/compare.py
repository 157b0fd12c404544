"""`deploybench compare BASE NEW`: two runs' figures matched by what was measured, each change
judged by the 95% intervals the records carry, and gates that turn a change into an exit code.

What is matched, one key per measurement (a figure present in one run only is listed as such):
- export: model and format -> size (bytes) and accuracy on the golden set (both exact: the
  same inputs give the same figure, so any change is real);
- load step: model, server, protocol, scenario and level (and `--repeat`) -> p50, p90, p99
  (95% distribution-free intervals) and, for a closed-loop step, throughput (its interval:
  the range of the rates of the window's three thirds, the record's stability figures; none
  for a window under 3 s; an open-loop step's rate is the one the generator offered);
- rate search: model, server, protocol, scenario -> the highest rate under the bound, its
  interval the search's bracket [that rate, the lowest rate that failed above it];
- edge and in-process rows: model, variant, runtime, threads, XNNPACK -> p50 and p99 (with
  `--repeats`, the median of the processes and the union of their intervals: the spread of
  fresh processes is the run-to-run noise) and accuracy (exact);
- bench: model, server, protocol, batching -> the best rate under the bound (no interval).

A change is significant where both intervals are whole and do not overlap (an exact figure:
where it changed at all). Gates (`--fail-on "p99:+10%,throughput:-5%,accuracy:-1pt"`) decide
each matched figure of their metric: within the threshold passes; beyond it and significant is
a regression (exit 5); beyond it but not significant, or with no interval to tell, is
inconclusive (exit 6). Every figure is the row's own: a verdict row's best step is compared
with the other run's best step, never with a sum over steps.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploybench.errors import DeploybenchError, UsageError
from deploybench.slo import GateFailed, GateInconclusive

# metric -> (unit, the better direction): a gate's sign must point the worse way
METRICS: dict[str, tuple[str, str]] = {
    "p50": ("ms", "lower"), "p90": ("ms", "lower"), "p99": ("ms", "lower"),
    "throughput": ("req/s", "higher"), "accuracy": ("", "higher"), "size": ("bytes", "lower"),
}
GATE = re.compile(r"\s*(?P<metric>[a-z0-9]+)\s*:\s*(?P<sign>[+-])\s*(?P<value>\d+(?:\.\d+)?)"
                  r"\s*(?P<unit>%|pt)\s*")
# environment keys that differ from run to run without explaining anything
UNCOMPARED_ENVIRONMENT = ("stage_seconds", "edge.artifacts", "run.", "created")


@dataclass(frozen=True)
class Figure:
    """One figure of one run: what it measures (`key`, `label`), its value and interval."""

    key: tuple[Any, ...]
    label: str
    metric: str
    value: float
    interval: tuple[float | None, float | None] | None = None
    exact: bool = False  # the same inputs give the same figure (no measurement noise)


@dataclass(frozen=True)
class Gate:
    metric: str
    threshold: float  # a fraction (relative) or percentage points (accuracy), positive
    relative: bool
    text: str

    def beyond(self, base: float, new: float) -> bool:
        """Whether `new` is worse than `base` by more than the threshold."""
        worse = (new - base) if METRICS[self.metric][1] == "lower" else (base - new)
        if self.relative:
            return base != 0 and worse / abs(base) > self.threshold
        return worse * 100 > self.threshold  # accuracy is a fraction; points are percent


@dataclass
class Change:
    """One figure in both runs, or in one only."""

    label: str
    metric: str
    base: float | None
    new: float | None
    base_interval: list[float | None] | None = None
    new_interval: list[float | None] | None = None
    change: float | None = None  # new - base
    relative: float | None = None  # (new - base) / base
    significant: bool | None = None  # None: no interval to judge by
    why: str = ""
    gate: str | None = None
    decision: str | None = None  # pass | regression | inconclusive (gated figures only)


@dataclass
class Comparison:
    base: str
    new: str
    environment: list[dict[str, Any]] = field(default_factory=list)  # changed keys first
    changes: list[Change] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)

    def decided(self, decision: str) -> list[Change]:
        return [c for c in self.changes if c.decision == decision]

    def exit_error(self) -> DeploybenchError | None:
        regressions, unsure = self.decided("regression"), self.decided("inconclusive")
        if regressions:
            return GateFailed(f"{len(regressions)} regression(s): " + "; ".join(
                f"{c.label} {c.gate} ({c.why})" for c in regressions[:3]))
        if unsure:
            return GateInconclusive(f"{len(unsure)} gated change(s) inconclusive: " + "; ".join(
                f"{c.label} {c.gate} ({c.why})" for c in unsure[:3]))
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_gates(text: str) -> list[Gate]:
    """--fail-on: METRIC:SIGN VALUE(%|pt), comma-separated; the sign is the worse direction."""
    gates = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = GATE.fullmatch(part)
        if not match or match["metric"] not in METRICS:
            raise UsageError(f"--fail-on: cannot read {part!r}: expected METRIC:+N% or "
                             f"METRIC:-N% (accuracy: -Npt), METRIC one of {', '.join(METRICS)}")
        metric, sign, unit = match["metric"], match["sign"], match["unit"]
        worse = "+" if METRICS[metric][1] == "lower" else "-"
        if sign != worse:
            raise UsageError(f"--fail-on: {part!r}: a {'higher' if sign == '+' else 'lower'} "
                             f"{metric} is no regression; write {metric}:{worse}"
                             f"{match['value']}{unit}")
        if (unit == "pt") != (metric == "accuracy"):
            raise UsageError(f"--fail-on: {part!r}: accuracy changes in points (pt), the "
                             f"other metrics in percent (%)")
        value = float(match["value"])
        gates.append(Gate(metric, value / 100 if unit == "%" else value, unit == "%", part))
    return gates


# --- the figures of one run -------------------------------------------------------------------


def _interval(row: dict[str, Any], key: str) -> tuple[float | None, float | None] | None:
    bounds = (row.get("latency_ci95_ms") or {}).get(key)
    return (bounds[0], bounds[1]) if bounds else None


def _server(row: dict[str, Any]) -> str:
    protocol = row.get("protocol_label") or row.get("protocol") or ""
    return f"{row.get('target_label') or row['target']} {protocol}".strip()


def _load_figures(row: dict[str, Any]) -> Iterator[Figure]:
    if row.get("status") != "ok" or not row.get("latency_ms"):
        return
    key = ("load", row["model"], row["target"], row["protocol"], row["scenario"],
           row["level"], row["level_unit"], row.get("repeat"))
    repeat = f", repeat {row['repeat']}" if row.get("repeat") else ""
    label = (f"load {row['model']} {_server(row)} {row['scenario']} {row['level']:g} "
             f"{row['level_unit']}{repeat}")
    for metric in ("p50", "p90", "p99"):
        value = row["latency_ms"].get(metric)
        if value is not None:
            yield Figure((*key, metric), label, metric, value, _interval(row, metric))
    # an open-loop step's throughput is the rate the generator offered (Poisson arrivals), not
    # the server's: its p99 and the rate search's result are the server's figures
    if row.get("throughput_rps") is not None and row["level_unit"] != "rps":
        thirds = (row.get("stability") or {}).get("window_rps")
        yield Figure((*key, "throughput"), label, "throughput", row["throughput_rps"],
                     (min(thirds), max(thirds)) if thirds else None)


def _rate_figures(row: dict[str, Any]) -> Iterator[Figure]:
    if row.get("max_rate_rps") is None:
        return
    best = row["max_rate_rps"]
    above = min((t["rps"] for t in row.get("tried", []) if not t["passed"] and t["rps"] > best),
                default=None)
    yield Figure(("load-slo", row["model"], row["target"], row["protocol"], row["scenario"],
                  "throughput"),
                 f"rate search {row['model']} {_server(row)} {row['scenario']} (p99 under "
                 f"{row['rate_bound_ms']:g} ms)", "throughput", best, (best, above))


def _export_figures(row: dict[str, Any]) -> Iterator[Figure]:
    if row.get("status") != "ok":
        return
    key, label = ("export", row["model"], row["format"]), f"export {row['model']} {row['format']}"
    if row.get("bytes") is not None:
        yield Figure((*key, "size"), label, "size", row["bytes"], exact=True)
    if row.get("accuracy") is not None:
        yield Figure((*key, "accuracy"), label, "accuracy", row["accuracy"], exact=True)


def _edge_figures(rows: list[dict[str, Any]]) -> Iterator[Figure]:
    """Edge and in-process rows, fresh processes of one measurement taken together."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("status") == "ok" and row.get("latency_ms"):
            groups[(row["kind"], row["model"], row["variant"], row["runtime"], row["threads"],
                    row.get("xnnpack"))].append(row)
    for key, group in groups.items():
        kind, model, variant, runtime, threads, xnnpack = key
        delegate = "" if xnnpack is None else (", XNNPACK" if xnnpack else ", no XNNPACK")
        label = (f"{'edge' if kind == 'edge' else 'in-process'} {model} {variant} on {runtime}, "
                 f"{threads} thread{'s' if threads != 1 else ''}{delegate}")
        for metric in ("p50", "p99"):
            values = [r["latency_ms"][metric] for r in group
                      if r["latency_ms"].get(metric) is not None]
            bounds = [_interval(r, metric) for r in group]
            if not values:
                continue
            interval = None
            if all(b is not None for b in bounds):
                lows, highs = [b[0] for b in bounds], [b[1] for b in bounds]
                interval = (None if None in lows else min(lows),
                            None if None in highs else max(highs))
            yield Figure((*key, metric), label, metric, statistics.median(values), interval)
        accuracy = [r["accuracy"] for r in group if r.get("accuracy") is not None]
        if accuracy:
            yield Figure((*key, "accuracy"), label, "accuracy", accuracy[0], exact=True)


def _bench_figures(row: dict[str, Any]) -> Iterator[Figure]:
    if row.get("max_rate_rps") is not None:
        batching = "batching on" if row.get("batching") else "batching off"
        yield Figure(("bench", row["model"], row["target"], row.get("protocol"),
                      row.get("batching"), "throughput"),
                     f"bench {row['model']} {_server(row)}, {batching}", "throughput",
                     row["max_rate_rps"])


def figures(results: dict[str, Any]) -> dict[tuple[Any, ...], Figure]:
    """Every comparable figure of a run, by what it measures."""
    rows = results.get("measurements", [])
    found: list[Figure] = list(_edge_figures([r for r in rows
                                               if r["kind"] in ("edge", "inprocess")]))
    readers = {"load": _load_figures, "load-slo": _rate_figures, "export": _export_figures,
               "bench": _bench_figures}
    for row in rows:
        if row["kind"] in readers:
            found.extend(readers[row["kind"]](row))
    return {f.key: f for f in found}


# --- comparing ---------------------------------------------------------------------------------


def _flat(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def environment_changes(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The environment keys whose values differ (versions, CPU, cores, limits, mode...)."""
    old, now = dict(_flat(base)), dict(_flat(new))
    return [{"key": key, "base": old.get(key), "new": now.get(key)}
            for key in sorted(old.keys() | now.keys())
            if old.get(key) != now.get(key)
            and not key.startswith(UNCOMPARED_ENVIRONMENT)]


def _overlap(a: tuple[float | None, float | None], b: tuple[float | None, float | None]
             ) -> bool | None:
    """Whether two intervals overlap; None where a bound is missing on a side that decides."""
    (a_low, a_high), (b_low, b_high) = a, b
    if a_high is not None and b_low is not None and a_high < b_low:
        return False
    if b_high is not None and a_low is not None and b_high < a_low:
        return False
    if None in (a_low, a_high, b_low, b_high):
        return None
    return True


def _judge(base: Figure, new: Figure) -> tuple[bool | None, str]:
    if base.exact and new.exact:
        return base.value != new.value, "exact figure (same inputs)"
    if base.interval is None or new.interval is None:
        return None, "no interval recorded: significance not judged"
    overlap = _overlap(base.interval, new.interval)
    if overlap is None:
        return None, "an interval is open (too few requests to bound it)"
    return (not overlap,
            "95% intervals overlap" if overlap else "95% intervals do not overlap")


def compare(base: dict[str, Any], new: dict[str, Any], gates: list[Gate], base_name: str,
            new_name: str) -> Comparison:
    before, after = figures(base), figures(new)
    result = Comparison(base_name, new_name,
                        environment_changes(base.get("environment", {}),
                                            new.get("environment", {})))
    by_metric = {gate.metric: gate for gate in gates}
    for key in sorted(before.keys() & after.keys(), key=str):
        a, b = before[key], after[key]
        significant, why = _judge(a, b)
        change = Change(a.label, a.metric, a.value, b.value,
                        list(a.interval) if a.interval else None,
                        list(b.interval) if b.interval else None,
                        b.value - a.value,
                        (b.value - a.value) / a.value if a.value else None, significant, why)
        gate = by_metric.get(a.metric)
        if gate is not None:
            change.gate = gate.text
            if not gate.beyond(a.value, b.value):
                change.decision = "pass"
            elif significant:
                change.decision = "regression"
            else:
                change.decision = "inconclusive"
        result.changes.append(change)
    result.only_base = sorted({f"{f.label} ({f.metric})" for k, f in before.items()
                               if k not in after})
    result.only_new = sorted({f"{f.label} ({f.metric})" for k, f in after.items()
                              if k not in before})
    return result


# --- what a comparison writes ------------------------------------------------------------------


def compare_runs(base_dir: Path, new_dir: Path, gates: list[Gate]) -> Comparison:
    """The two run folders' results.json compared; an unusable one is a UsageError (exit 2)
    naming the file and the problem."""
    from deploybench.report import load_results

    loaded = []
    for run_dir in (base_dir, new_dir):
        try:
            loaded.append(load_results(run_dir))
        except DeploybenchError as error:
            raise UsageError(str(error)) from None
    return compare(*loaded, gates, str(base_dir), str(new_dir))


def write_comparison(comparison: Comparison, out: Path) -> tuple[Path, Path, Path]:
    """compare.md, compare.html and compare.json in `out`, each written whole or not at all."""
    import json

    from deploybench.files import atomic_write_text
    from deploybench.report import template_environment

    out.mkdir(parents=True, exist_ok=True)
    env = template_environment()
    data = {"comparison": comparison, "metrics": METRICS,
            "regressions": comparison.decided("regression"),
            "inconclusive": comparison.decided("inconclusive")}
    paths = out / "compare.md", out / "compare.html", out / "compare.json"
    atomic_write_text(paths[0], env.get_template("compare.md.j2").render(**data))
    atomic_write_text(paths[1], env.get_template("compare.html.j2").render(**data))
    atomic_write_text(paths[2], json.dumps(comparison.to_dict(), indent=1))
    return paths


def write_junit(comparison: Comparison, path: Path) -> None:
    """One JUnit test case per gated figure: a regression fails, an inconclusive one is
    skipped with why."""
    from deploybench.slo import write_junit_cases

    write_junit_cases("deploybench compare", [
        (f"{c.metric} {c.gate}", c.label,
         "fail" if c.decision == "regression" else c.decision,
         f"{c.base:.6g} -> {c.new:.6g} ({_percent(c.relative)}); {c.why}")
        for c in comparison.changes if c.decision is not None], path)


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:+.1f}%"
