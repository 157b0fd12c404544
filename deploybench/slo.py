"""SLO gates: a small grammar, each gate decided per load step with the figure's uncertainty.

    --slo "p99<=100ms,p50<=20ms,error_rate<=0.1%,wrong_answers==0,throughput>=50rps"

A gate is METRIC OP VALUE[UNIT]. Metrics: p50, p90, p95, p99, p99.9 (milliseconds: `ms` or
`s`), error_rate (a fraction, or `%`), wrong_answers (a count), throughput (correct answers
per second, `rps`). OP: <=, <, >=, >, ==.

Each gate is decided on every load step of the run, against its interval:
- a percentile by its 95% distribution-free interval (loadtest/intervals.py): the whole
  interval on the good side passes, the whole interval on the bad side fails, an interval across
  the bound (or a bound the step had too few requests to give) is inconclusive;
- error_rate by the 95% Clopper-Pearson interval of failures / requests, decided alike;
- wrong_answers and throughput by their measured value (exact counts; throughput's spread is
  the noise checks' business).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploybench.errors import DeploybenchError, UsageError
from deploybench.files import atomic_write_text
from deploybench.records import SloGateRecord


class GateFailed(DeploybenchError):
    exit_code = 5


class GateInconclusive(DeploybenchError):
    exit_code = 6


OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}
PERCENTILE_METRICS = {"p50": "p50", "p90": "p90", "p95": "p95", "p99": "p99", "p99.9": "p99_9"}
UNITS = {  # metric kind -> unit -> factor to the metric's own unit
    "latency": {"ms": 1.0, "s": 1000.0, "": 1.0},
    "rate": {"%": 0.01, "": 1.0},
    "count": {"": 1.0},
    "throughput": {"rps": 1.0, "": 1.0},
}
KIND = {**dict.fromkeys(PERCENTILE_METRICS, "latency"), "error_rate": "rate",
        "wrong_answers": "count", "throughput": "throughput"}
GATE = re.compile(r"\s*(?P<metric>[a-z_]+|p\d+(?:\.\d+)?)\s*(?P<op><=|>=|==|<|>)\s*"
                  r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|%|rps)?\s*")


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    value: float  # in the metric's unit: ms, a fraction, a count, requests/s
    text: str  # as the user wrote it

    def holds(self, figure: float) -> bool:
        return OPERATORS[self.op](figure, self.value)


def parse(text: str) -> list[Gate]:
    """Gates from `--slo` (comma-separated); a UsageError naming the bad part otherwise."""
    gates = []
    for part in (p for p in text.split(",") if p.strip()):
        found = GATE.fullmatch(part)
        if not found:
            raise UsageError(f"--slo: cannot read {part.strip()!r}: expected METRIC OP VALUE, "
                             "e.g. p99<=100ms, error_rate<=0.1%, wrong_answers==0")
        metric, unit = found["metric"], found["unit"] or ""
        if metric not in KIND:
            raise UsageError(f"--slo: unknown metric {metric!r} in {part.strip()!r}; known: "
                             f"{', '.join(KIND)}")
        factors = UNITS[KIND[metric]]
        if unit not in factors:
            raise UsageError(f"--slo: {metric} takes {' or '.join(u for u in factors if u) or 'no'}"
                             f" unit, not {unit!r} ({part.strip()!r})")
        gates.append(Gate(metric, found["op"], float(found["value"]) * factors[unit],
                          part.strip()))
    if not gates:
        raise UsageError("--slo: no gate given")
    return gates


@dataclass
class Decision:
    gate: str
    target: str
    protocol: str
    model: str
    level: float
    level_unit: str
    decision: str  # pass | fail | inconclusive
    observed: float | None
    interval: list[float | None] | None
    why: str

    @property
    def subject(self) -> str:
        return f"{self.target}/{self.protocol} {self.model} {self.level:g} {self.level_unit}"


def decide(gates: list[Gate], steps: list[dict[str, Any]]) -> list[Decision]:
    """Every gate on every load step (failed steps fail every gate)."""
    return [_decide(gate, step) for step in steps for gate in gates]


def _decide(gate: Gate, step: dict[str, Any]) -> Decision:
    base = {"gate": gate.text, "target": step["target"], "protocol": step["protocol"],
            "model": step["model"], "level": step["level"], "level_unit": step["level_unit"]}
    if step.get("status") != "ok":
        return Decision(**base, decision="fail", observed=None, interval=None,
                        why=f"the step failed: {step.get('reason', '')}"[:200])
    if gate.metric in PERCENTILE_METRICS:
        key = PERCENTILE_METRICS[gate.metric]
        observed = (step.get("latency_ms") or {}).get(key)
        interval = (step.get("latency_ci95_ms") or {}).get(key) or [None, None]
        return _by_interval(gate, base, observed, interval, "ms")
    if gate.metric == "error_rate":
        from scipy.stats import binomtest

        requests, failures = step["requests"], step["failures"]
        if not requests:
            return Decision(**base, decision="inconclusive", observed=None, interval=None,
                            why="no requests completed")
        ci = binomtest(failures, requests).proportion_ci(0.95, method="exact")
        return _by_interval(gate, base, failures / requests, [ci.low, ci.high], "")
    observed = float(step["wrong_answers"] if gate.metric == "wrong_answers"
                     else step["throughput_rps"])
    held = gate.holds(observed)
    return Decision(**base, decision="pass" if held else "fail", observed=observed,
                    interval=None, why=f"{observed:g} {'meets' if held else 'misses'} "
                                       f"{gate.op} {gate.value:g} (an exact figure)")


def _by_interval(gate: Gate, base: dict[str, Any], observed: float | None,
                 interval: list[float | None], unit: str) -> Decision:
    low, high = interval
    shown = f"[{_num(low)}, {_num(high)}]{unit}"
    upper_bound = gate.op in ("<=", "<")  # the figure must stay under the gate's value
    good = high if upper_bound else low  # the side that must clear the value to pass
    bad = low if upper_bound else high
    if good is not None and gate.holds(good):
        decision, why = "pass", f"95% interval {shown} within {gate.op} {gate.value:g}{unit}"
    elif bad is not None and not gate.holds(bad):
        decision, why = "fail", f"95% interval {shown} wholly beyond {gate.value:g}{unit}"
    else:
        missing = good is None
        decision = "inconclusive"
        why = (f"95% interval {shown}: too few requests to bound it" if missing
               else f"95% interval {shown} straddles {gate.value:g}{unit}")
    return Decision(**base, decision=decision, observed=observed, interval=[low, high], why=why)


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def exit_error(decisions: list[Decision]) -> DeploybenchError | None:
    """The error to exit with: a failed gate first, then an inconclusive one; None if all pass."""
    failed = [d for d in decisions if d.decision == "fail"]
    if failed:
        return GateFailed(f"{len(failed)} of {len(decisions)} SLO gate decisions failed: "
                          + "; ".join(f"{d.gate} on {d.subject} ({d.why})" for d in failed[:3]))
    unsure = [d for d in decisions if d.decision == "inconclusive"]
    if unsure:
        return GateInconclusive(
            f"{len(unsure)} of {len(decisions)} SLO gate decisions inconclusive: "
            + "; ".join(f"{d.gate} on {d.subject} ({d.why})" for d in unsure[:3]))
    return None


def write_junit(decisions: list[Decision], path: Path) -> None:
    """One JUnit test case per gate and load step: CI systems show each gate's outcome."""
    write_junit_cases("deploybench SLO gates",
                      [(d.gate, d.subject, d.decision, d.why) for d in decisions], path)


def write_junit_cases(suite_name: str, cases: list[tuple[str, str, str, str]], path: Path
                      ) -> None:
    """A JUnit file of (name, classname, decision, why) cases: "fail" fails, "inconclusive"
    is skipped with why, any other decision passes (the SLO gates' and `compare`'s)."""
    from junitparser import Failure, JUnitXml, Skipped, TestCase, TestSuite

    suite = TestSuite(suite_name)
    for name, classname, decision, why in cases:
        case = TestCase(name, classname=classname)
        if decision == "fail":
            case.result = [Failure(why)]
        elif decision == "inconclusive":
            case.result = [Skipped(f"inconclusive: {why}")]
        suite.add_testcase(case)
    document = JUnitXml()
    document.add_testsuite(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = document.tostring()
    atomic_write_text(path, text.decode() if isinstance(text, bytes) else text)


def records(decisions: list[Decision]) -> list[SloGateRecord]:
    """results.json's records of the decisions (kind "slo-gate")."""
    return [SloGateRecord(**asdict(d)) for d in decisions]
