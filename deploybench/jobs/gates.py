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
    steps = [m for m in measurements if m.get("kind", "load") == "load"]
    decisions = slo.decide(gates, steps)
    writer.add(*slo.records(decisions))
    console.print(table(decisions))
    if junit is not None:
        slo.write_junit(decisions, junit)
        console.print(f"SLO gates as JUnit XML: {junit}", highlight=False)
    return decisions


def table(decisions: list[slo.Decision]) -> Table:
    shown = Table(title="SLO gates (95% intervals)")
    for column in ("gate", "step", "decision", "observed", "interval", "why"):
        shown.add_column(column)
    for d in decisions:
        interval = ("" if d.interval is None else
                    "[" + ", ".join("?" if v is None else f"{v:.4g}" for v in d.interval) + "]")
        shown.add_row(d.gate, d.subject, f"[{STYLE[d.decision]}]{d.decision}[/]",
                      "" if d.observed is None else f"{d.observed:.4g}", interval, d.why)
    return shown
