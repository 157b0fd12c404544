"""report.html and report.md, rebuilt from a run's results.json alone."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape

from deploybench import plots
from deploybench.errors import DeploybenchError
from deploybench.files import atomic_write_text
from deploybench.results import RESULTS_FILE
from deploybench.verdict import (
    answer_lines,
    bound_of,
    latency,
    rows,
    unavailable_servers,
    verdict_table,
)

PLOTS_DIR = "plots"


def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, Undefined):  # optional fields may be absent
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("deploybench", "templates"),
                      trim_blocks=True,
                      autoescape=select_autoescape(enabled_extensions=("html.j2",)),
                      lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["ms"] = lambda row, key: _num(latency(row, key))
    return env


def load_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise DeploybenchError(f"{path}: no results.json in this run folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DeploybenchError(f"{path}: not valid JSON ({error})") from error


def context(results: dict[str, Any]) -> dict[str, Any]:
    bound = bound_of(results)
    return {
        "results": results,
        "answers": answer_lines(results),
        "bound": bound,
        "verdict": verdict_table(results),
        "servers": rows(results, "server"),
        "unavailable": unavailable_servers(results),
        "exports": rows(results, "export"),
        "edge": sorted(rows(results, "edge") + rows(results, "inprocess"),
                       key=lambda r: (r["model"], r["kind"], r["variant"], r["threads"],
                                      str(r.get("xnnpack")))),
        "load": rows(results, "load"),
        "bench": rows(results, "bench"),
        "ceilings": rows(results, "bench-ceiling"),
        "environment": results.get("environment", {}),
        "partial": results.get("partial", False),
        "notes": results.get("notes", []),
    }


def render_plots(results: dict[str, Any]) -> dict[str, bytes]:
    bound = bound_of(results)
    figures = {
        "throughput_vs_p99": plots.throughput_vs_p99(results, bound),
        "latency_percentiles": plots.latency_percentiles(results),
        "edge_tradeoff": plots.edge_tradeoff(results),
    }
    return {name: png for name, png in figures.items() if png}


def write_reports(run_dir: Path) -> tuple[Path, Path]:
    """Render report.html (self-contained) and report.md (+ plots/*.png) from results.json."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    pngs = render_plots(results)
    env = _environment()
    data = context(results)
    html = env.get_template("report.html.j2").render(
        **data, images={k: base64.b64encode(v).decode() for k, v in pngs.items()})
    (run_dir / PLOTS_DIR).mkdir(exist_ok=True)
    for name, png in pngs.items():
        (run_dir / PLOTS_DIR / f"{name}.png").write_bytes(png)
    markdown = env.get_template("report.md.j2").render(**data, images=sorted(pngs))
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    atomic_write_text(html_path, html)
    atomic_write_text(md_path, markdown)
    return html_path, md_path
