"""The HTML report's interactive charts: plotly.js figures (data and layout as plain dicts),
drawn in the page by the plotly.js bundle inlined once in it (plotly's Python package ships
the bundle: nothing is fetched, the page opens offline). Hover shows each point's exact
figures and interval, a legend entry toggles its series, drag zooms, double-click resets.

plotly.js was chosen for its hover labels, legend toggling, zoom and error bars built in, and
a bundle the Python package carries at a pinned version; its cost is ~4.8 MB of script in
every report.html (the Markdown report keeps its static images, deploybench/plots.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from deploybench import tuned
from deploybench.formatting import configuration_text
from deploybench.manifest import format_label
from deploybench.verdict import latency, rows, server_label

PERCENTILES = ("p50", "p90", "p99", "p99_9")
CONFIG = {"displaylogo": False, "responsive": True,
          # the mode bar's buttons that reach the network or a cloud service
          "modeBarButtonsToRemove": ["sendDataToCloud"]}


def plotly_js() -> str:
    """The plotly.js bundle of the installed plotly package, to inline in the page."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _interval(row: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    bounds = (row.get("latency_ci95_ms") or {}).get(key) or [None, None]
    return bounds[0], bounds[1]


def _bounds_text(low: float | None, high: float | None) -> str:
    return f"[{'?' if low is None else f'{low:.4g}'}, {'?' if high is None else f'{high:.4g}'}]"


def _error_bars(values: list[float], bounds: list[tuple[float | None, float | None]]
                ) -> dict[str, Any]:
    return {"type": "data", "symmetric": False, "thickness": 1,
            "array": [0 if high is None else high - value
                      for value, (_, high) in zip(values, bounds, strict=True)],
            "arrayminus": [0 if low is None else value - low
                           for value, (low, _) in zip(values, bounds, strict=True)]}


def _bound_line(bound_ms: float) -> dict[str, Any]:
    """The p99 bound across a chart, as a dashed grey line."""
    return {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": bound_ms, "y1": bound_ms,
            "line": {"dash": "dash", "color": "grey"}}


def servers_chart(results: dict[str, Any], bound_ms: float) -> dict[str, Any] | None:
    """Throughput against p99 for every load step: one series per model, server, protocol
    and scenario (the sweep's closed-loop levels, the rate search's open-loop rates)."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows(results, "load"):
        if latency(row, "p99") is not None and row.get("throughput_rps") is not None:
            series[(f"{row['model']} · {server_label(row)}", row["scenario"])].append(row)
    if not series:
        return None
    traces = []
    for (label, scenario), steps in sorted(series.items()):
        steps.sort(key=lambda r: r["level"])
        p99 = [latency(r, "p99") for r in steps]
        bounds = [_interval(r, "p99") for r in steps]
        traces.append({
            # a rate search probes rates out of order: its points, not a line through them
            "type": "scatter", "mode": "markers" if scenario == "rate" else "lines+markers",
            "name": f"{label} ({scenario})",
            "x": [r["throughput_rps"] for r in steps], "y": p99,
            "error_y": _error_bars(p99, bounds),
            "text": [f"{r['level']:g} {r['level_unit']}: {r['throughput_rps']:.4g} req/s, "
                     f"p99 {value:.4g} ms {_bounds_text(*b)}, {r.get('failures') or 0} failed"
                     for r, value, b in zip(steps, p99, bounds, strict=True)],
            "hovertemplate": "%{fullData.name}<br>%{text}<extra></extra>",
        })
    layout = {"title": {"text": "Throughput against p99 (95% intervals; points alone: the "
                                "rate search's probes)"},
              "xaxis": {"title": {"text": "throughput (correct answers/s)"}},
              "yaxis": {"title": {"text": "p99 latency (ms)"}, "type": "log"},
              "shapes": [_bound_line(bound_ms)],
              "annotations": [{"xref": "paper", "x": 1, "y": _log10(bound_ms), "yref": "y",
                               "text": f"p99 bound {bound_ms:g} ms", "showarrow": False,
                               "xanchor": "right", "yanchor": "bottom"}],
              "legend": {"orientation": "h", "y": -0.25}, "margin": {"t": 50}}
    return {"data": traces, "layout": layout}


def _log10(value: float) -> float:
    import math

    return math.log10(value) if value > 0 else 0.0


def latency_chart(results: dict[str, Any]) -> dict[str, Any] | None:
    """p50 to p99.9 of every load step, grouped by step, with the 95% intervals."""
    steps = [r for r in rows(results, "load") if latency(r, "p50") is not None]
    if not steps:
        return None
    steps.sort(key=lambda r: (r["model"], server_label(r), r["scenario"], r["level"]))
    names = [f"{server_label(r)} · {r['model']} · {r['scenario']} {r['level']:g} "
             f"{r['level_unit']}" for r in steps]
    traces = []
    for key in PERCENTILES:
        values = [latency(r, key) for r in steps]
        bounds = [_interval(r, key) for r in steps]
        traces.append({
            "type": "bar", "name": key.replace("_", "."), "x": names,
            "y": [v if v is not None else 0 for v in values],
            "error_y": _error_bars([v or 0 for v in values], bounds),
            "text": [f"{key.replace('_', '.')} {v:.4g} ms {_bounds_text(*b)}"
                     if v is not None else "not measured"
                     for v, b in zip(values, bounds, strict=True)],
            "textposition": "none",
            "hovertemplate": "%{x}<br>%{text}<extra></extra>"})
    layout = {"title": {"text": "Latency percentiles of every load step (95% intervals)"},
              "barmode": "group", "yaxis": {"title": {"text": "latency (ms)"}, "type": "log"},
              "xaxis": {"automargin": True}, "margin": {"t": 50}}
    return {"data": traces, "layout": layout}


def edge_chart(results: dict[str, Any]) -> dict[str, Any] | None:
    """Size against p50 of every edge artifact and in-process baseline, one series per
    runtime, at the run's lowest thread count (the first fresh process of each row)."""
    points = [r for r in rows(results, "edge") + rows(results, "inprocess")
              if r.get("status", "ok") == "ok" and latency(r, "p50") and r.get("size_bytes")
              and r.get("repeat") in (None, 1) and r.get("xnnpack") is not False]
    if not points:
        return None
    threads = min(r["threads"] for r in points)
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in points:
        if row["threads"] == threads:
            where = "in process" if row["kind"] == "inprocess" else "edge"
            series[f"{row['runtime']} ({where})"].append(row)
    traces = []
    for name, group in sorted(series.items()):
        p50 = [latency(r, "p50") for r in group]
        bounds = [_interval(r, "p50") for r in group]
        traces.append({
            "type": "scatter", "mode": "markers", "name": name,
            "x": [r["size_bytes"] / 1024 for r in group], "y": p50,
            "error_y": _error_bars(p50, bounds), "marker": {"size": 10},
            "text": [f"{r['model']} {format_label(r['variant'])} on {r['runtime']}: "
                     f"p50 {v:.4g} ms {_bounds_text(*b)}, {r['size_bytes'] / 1024:.4g} KiB, "
                     f"accuracy {_figure(r.get('accuracy'))}, top-1 agreement "
                     f"{_figure(r.get('top1_agreement'))}"
                     for r, v, b in zip(group, p50, bounds, strict=True)],
            "hovertemplate": "%{text}<extra></extra>"})
    layout = {"title": {"text": f"Edge: size against p50 latency, batch 1, {threads} "
                                f"thread{'s' if threads > 1 else ''} (95% intervals)"},
              "xaxis": {"title": {"text": "size (KiB)"}, "type": "log"},
              "yaxis": {"title": {"text": "p50 latency (ms)"}, "type": "log"},
              "margin": {"t": 50}}
    return {"data": traces, "layout": layout}


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def export_chart(results: dict[str, Any]) -> dict[str, Any] | None:
    """Every exported artifact's size, per model and twin, its parity figure on hover."""
    exports = [r for r in rows(results, "export") if r.get("bytes")]
    if not exports:
        return None
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in exports:
        series[f"{row['model']} · {row.get('framework') or 'model'}"].append(row)
    traces = []
    for name, group in sorted(series.items()):
        traces.append({
            "type": "bar", "name": name, "x": [format_label(r["format"]) for r in group],
            "y": [r["bytes"] / 1024 for r in group],
            "text": [f"{r['model']} {format_label(r['format'])}: {r['bytes'] / 1024:.4g} KiB, "
                     f"{r['status']}; max abs diff {_figure(r.get('max_abs_diff'))}, accuracy "
                     f"{_figure(r.get('accuracy'))}" for r in group],
            "textposition": "none", "hovertemplate": "%{text}<extra></extra>"})
    layout = {"title": {"text": "Export: every artifact's size (hover: its parity figures)"},
              "barmode": "group", "yaxis": {"title": {"text": "size (KiB)"}, "type": "log"},
              "xaxis": {"automargin": True}, "margin": {"t": 50}}
    return {"data": traces, "layout": layout}


def tune_chart(results: dict[str, Any], bound_ms: float) -> dict[str, Any] | None:
    """`deploybench tune`: every screen's closed-loop rate under the bound against its p99
    there, one colour per server, each server's Pareto front of screens as a line, and its
    confirmed open-loop rates as diamonds."""
    traces = []
    for section in tuned.sections(results):
        outcome = section["outcome"]
        label = f"{outcome['model']} · {server_label(outcome)}"
        for phase, name, marker in (("screen", "screens (closed loop)", "circle"),
                                    ("confirm", "confirmed (open loop)", "diamond")):
            measured = [p for p in section["probes"] if p["phase"] == phase
                        and p.get("rate_rps") is not None and p.get("p99_ms") is not None]
            if not measured:
                continue
            bounds = [_interval(p, "p99") for p in measured]
            p99 = [p["p99_ms"] for p in measured]
            traces.append({
                "type": "scatter", "mode": "markers", "name": f"{label}: {name}",
                "legendgroup": label, "marker": {"symbol": marker, "size": 9},
                "x": [p["rate_rps"] for p in measured], "y": p99,
                "error_y": _error_bars(p99, bounds),
                "text": [f"probe {p['probe']} ({phase}): "
                         f"{configuration_text(p['configuration'])}<br>{p['rate_rps']:.4g} "
                         f"req/s ({p['at']}), p99 {p['p99_ms']:.4g} ms {_bounds_text(*b)}"
                         for p, b in zip(measured, bounds, strict=True)],
                "hovertemplate": "%{fullData.name}<br>%{text}<extra></extra>",
            })
        front = sorted((p for p in section["probes"] if p["pareto"]),
                       key=lambda p: p["rate_rps"])
        if front:
            traces.append({
                "type": "scatter", "mode": "lines", "name": f"{label}: Pareto front",
                "legendgroup": label, "x": [p["rate_rps"] for p in front],
                "y": [p["p99_ms"] for p in front], "hoverinfo": "skip",
            })
    if not traces:
        return None
    layout = {"title": {"text": "Tuning: each probe's rate under the bound against its p99 "
                                "there (95% intervals), and each server's Pareto front"},
              "xaxis": {"title": {"text": "highest rate with p99 under the bound (req/s)"}},
              "yaxis": {"title": {"text": "p99 at that rate (ms)"}, "rangemode": "tozero"},
              "shapes": [_bound_line(bound_ms)],
              "legend": {"orientation": "h", "y": -0.25}, "margin": {"t": 50}}
    return {"data": traces, "layout": layout}


def charts(results: dict[str, Any], bound_ms: float) -> dict[str, dict[str, Any]]:
    """The report's charts by name (those with something to draw): the first screen's
    servers, edge and export, then the load steps' percentiles."""
    made = {"servers": servers_chart(results, bound_ms), "edge": edge_chart(results),
            "export": export_chart(results), "latency": latency_chart(results),
            "tune": tune_chart(results, bound_ms)}
    return {name: chart for name, chart in made.items() if chart}
