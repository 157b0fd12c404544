"""SLO gates on a run's load steps (deploybench/slo.py): decided, printed as a table, written to
results.json (kind "slo-gate") and as JUnit XML; the exit code says how they came out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deploybench import slo
from deploybench.jobs.writer import RunWriter

STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}


def judge(gates: list[slo.Gate], measurements: list[dict[str, Any]], writer: RunWriter,
          console: Console, junit: Path | None = None) -> list[slo.Decision]:
    """Decide every gate on every load step; record, show and write them. Raises nothing: the
    caller ends with `slo.exit_error(decisions)` once its own work is saved."""
    decisions = slo.decide(gates, gated_steps(measurements))
    writer.add(*slo.records(decisions))
    console.print(table(decisions))
    if junit is not None:
        slo.write_junit(decisions, junit)
        console.print(f"SLO gates as JUnit XML: {junit}", highlight=False)
    return decisions


def gated_steps(measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The load steps the gates judge: every step of a sweep or of fixed rates; of a rate
    search, which probes rates on purpose until one fails, only the step it settled on (the
    highest rate that passed; none passed: its lowest rate)."""
    searched = {(m["target"], m["protocol"], m["model"], m["scenario"]): m["max_rate_rps"]
                for m in measurements if m.get("kind") == "load-slo"
                and m.get("stopped_by") != "fixed rates"}
    steps = [m for m in measurements if m.get("kind") == "load"]
    chosen = []
    for step in steps:
        key = (step["target"], step["protocol"], step["model"], step["scenario"])
        if key not in searched:
            chosen.append(step)
            continue
        same = [s for s in steps if (s["target"], s["protocol"], s["model"], s["scenario"]) == key]
        best = searched[key]
        settled = (next(s for s in same if s["level"] == best) if best is not None
                   else min(same, key=lambda s: s["level"]))
        if step is settled:
            chosen.append(step)
    return chosen


def table(decisions: list[slo.Decision]) -> Table:
    shown = Table(title="SLO gates (95% intervals)")
    for column in ("gate", "step", "decision", "observed", "interval", "why"):
        shown.add_column(column)
    for d in decisions:
        interval = ("" if d.interval is None else
                    "[" + ", ".join("?" if v is None else f"{v:.4g}" for v in d.interval) + "]")
        shown.add_row(d.gate, d.subject, f"[{STYLE[d.decision]}]{d.decision}[/]",
                      "" if d.observed is None else f"{d.observed:.4g}", interval,
                      "" if d.decision == "pass" else d.why)
    return shown
