"""report.html and report.md, rebuilt from a run's results.json alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape

from deploybench import plots, tuned
from deploybench.charts import CONFIG, charts, plotly_js
from deploybench.errors import DeploybenchError
from deploybench.files import atomic_write_text
from deploybench.formatting import configuration_text, number
from deploybench.manifest import format_label
from deploybench.matrix import FRAMEWORKS, matrices
from deploybench.results import RESULTS_FILE, read_results
from deploybench.verdict import (
    answer_lines,
    bound_of,
    latency,
    rows,
    server_label,
    unavailable_servers,
    verdict_table,
)

PLOTS_DIR = "plots"


def _cell(value: Any, digits: int = 3) -> str:
    # optional fields may be absent from a row: the template sees Undefined, the cell a dash
    return number(None if isinstance(value, Undefined) else value, digits)


def _ms(row: dict[str, Any], key: str) -> str:
    """A percentile in ms, with its 95% interval where the row has one ("?": a bound the step
    had too few requests to give)."""
    text = number(latency(row, key))
    interval = (row.get("latency_ci95_ms") or {}).get(key)
    if interval and latency(row, key) is not None:
        low, high = ("?" if v is None else number(v) for v in interval)
        text += f" [{low}, {high}]"
    return text


def template_environment() -> Environment:
    env = Environment(loader=PackageLoader("deploybench", "templates"),
                      trim_blocks=True,
                      autoescape=select_autoescape(enabled_extensions=("html.j2",)),
                      lstrip_blocks=True)
    env.filters["num"] = _cell
    env.filters["ms"] = _ms
    env.filters["server"] = server_label
    env.filters["format"] = format_label
    env.filters["configuration"] = configuration_text
    return env


def load_results(run_dir: Path) -> dict[str, Any]:
    """The run's results.json, validated against the record types (one line naming the record
    and the field if it does not fit), as plain dicts for the templates."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise DeploybenchError(f"{path}: no results.json in this run folder")
    return read_results(path).dump()


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
        "matrices": matrices(results),
        "frameworks": FRAMEWORKS,
        "load": rows(results, "load"),
        "gates": rows(results, "slo-gate"),
        "calibration": rows(results, "loadgen-calibration"),
        "breakdown": plots.breakdown_rows(results),
        "bench": rows(results, "bench"),
        "ceilings": rows(results, "bench-ceiling"),
        "tuned": tuned.sections(results),
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
        "where_time_goes": plots.where_time_goes(results),
    }
    return {name: png for name, png in figures.items() if png}


def write_reports(run_dir: Path) -> tuple[Path, Path]:
    """Render report.html (self-contained) and report.md (+ plots/*.png) from results.json."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    pngs = render_plots(results)
    env = template_environment()
    data = context(results)
    html = env.get_template("report.html.j2").render(
        **data, charts=charts(results, bound_of(results)), plotly_js=plotly_js(),
        chart_config=CONFIG)
    (run_dir / PLOTS_DIR).mkdir(exist_ok=True)
    for name, png in pngs.items():
        (run_dir / PLOTS_DIR / f"{name}.png").write_bytes(png)
    markdown = env.get_template("report.md.j2").render(**data, images=sorted(pngs))
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    atomic_write_text(html_path, html)
    atomic_write_text(md_path, markdown)
    return html_path, md_path
