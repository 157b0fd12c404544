"""The report's pictures, as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from deploybench.verdict import latency, rows, server_label

PERCENTILES = ("p50", "p90", "p99", "p99_9")
EDGE_COLOURS = {"litert": "black", "executorch": "blue", "onnxruntime": "green"}


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _figure(width: float = 7.5, height: float = 4.2, ncols: int = 1):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), squeeze=False)


def _load_series(results: dict[str, Any], scenario: str) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows(results, "load"):
        if row.get("scenario") == scenario and latency(row, "p99") is not None:
            label = f"{row['model']} · {server_label(row)}"
            series[label].append(row)
    return dict(sorted(series.items()))


def throughput_vs_p99(results: dict[str, Any], bound_ms: float) -> bytes | None:
    """The headline curve: each server's throughput against its p99, per load level."""
    series = _load_series(results, "sweep")
    if not series:
        return None
    figure, axes = _figure()
    ax = axes[0][0]
    for label, steps in series.items():
        steps = sorted(steps, key=lambda r: r["level"])
        p99 = [latency(r, "p99") for r in steps]
        # error bars: the 95% interval of each p99; an undetermined bound draws none
        bounds = [(r.get("latency_ci95_ms") or {}).get("p99") or [None, None] for r in steps]
        below = [value - low if low is not None else 0.0
                 for value, (low, _) in zip(p99, bounds, strict=True)]
        above = [high - value if high is not None else 0.0
                 for value, (_, high) in zip(p99, bounds, strict=True)]
        ax.errorbar([r["throughput_rps"] for r in steps], p99, yerr=[below, above],
                    marker="o", capsize=3, label=label)
        for r in steps:
            ax.annotate(str(r["level"]), (r["throughput_rps"], latency(r, "p99")),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(bound_ms, color="grey", linestyle="--", linewidth=1,
               label=f"p99 bound {bound_ms:g} ms")
    ax.set_xlabel("throughput (req/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Throughput vs p99, 95% intervals (labels: concurrent users)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(figure)


def latency_percentiles(results: dict[str, Any]) -> bytes | None:
    """p50 to p99.9 at each load level, one panel per server series."""
    series = _load_series(results, "sweep")
    if not series:
        return None
    figure, axes = _figure(width=4.2 * len(series), height=3.8, ncols=len(series))
    for ax, (label, steps) in zip(axes[0], series.items(), strict=True):
        steps = sorted(steps, key=lambda r: r["level"])
        for key in PERCENTILES:
            ax.plot([r["level"] for r in steps], [latency(r, key) for r in steps],
                    marker=".", label=key.replace("_", "."))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent users")
        ax.set_ylabel("latency (ms)")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _png(figure)


def edge_tradeoff(results: dict[str, Any]) -> bytes | None:
    """Size vs latency for every edge artifact and in-process baseline (the first of each
    row's repeats); colour = accuracy."""
    points = [r for r in rows(results, "edge") + rows(results, "inprocess")
              if r.get("status", "ok") == "ok" and latency(r, "p50") and r.get("size_bytes")
              and r.get("repeat", 1) in (None, 1)]
    if not points:
        return None
    threads = min(r["threads"] for r in points)
    points = [r for r in points if r["threads"] == threads and r.get("xnnpack", True) is not False
              or (r["threads"] == threads and r["kind"] == "inprocess")]
    figure, axes = _figure()
    ax = axes[0][0]
    accuracies = [r.get("accuracy") or r.get("top1_agreement") or 0 for r in points]
    scatter = ax.scatter(
        [r["size_bytes"] / 1024 for r in points], [latency(r, "p50") for r in points],
        c=accuracies, cmap="viridis", s=60,
        marker="o", edgecolors=[EDGE_COLOURS.get(r.get("runtime"), "red")
                                if r["kind"] == "edge" else "red" for r in points],
    )
    for r in points:
        ax.annotate(f"{r['model']} {r['variant']}", (r["size_bytes"] / 1024, latency(r, "p50")),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    figure.colorbar(scatter, ax=ax, label="accuracy (or top-1 agreement)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("size (KiB)")
    ax.set_ylabel(f"p50 latency at batch 1, {threads} thread(s) (ms)")
    ax.set_title("Edge: size vs latency vs accuracy\n(edge: black LiteRT, blue ExecuTorch, "
                 "green ONNX Runtime; red in-process baseline)", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(figure)


BREAKDOWN_PARTS = (("outside_server", "outside the server (network, front end, client)"),
                   ("server_other", "server, besides queue and model"),
                   ("queue", "queue"), ("model_io", "model tensors in and out"),
                   ("model", "model"))


def breakdown_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The load steps whose server published a split of its time, in report order."""
    found = [row for row in rows(results, "load")
             if ((row.get("server_metrics") or {}).get("breakdown_ms"))]
    return sorted(found, key=lambda r: (r["model"], server_label(r), r["scenario"], r["level"]))


def where_time_goes(results: dict[str, Any]) -> bytes | None:
    """One stacked bar per server and load level: the client's mean latency, split by the
    server's own metrics (a part it does not publish stays in the part that contains it)."""
    steps = breakdown_rows(results)
    if not steps:
        return None
    figure, axes = _figure(width=max(7.5, 1.0 + 0.9 * len(steps)))
    ax = axes[0][0]
    labels = [f"{server_label(r)}\n{r['model']}\n{r['level']:g} {r['level_unit']}"
              for r in steps]
    bottom = [0.0] * len(steps)
    for key, name in BREAKDOWN_PARTS:
        heights = [max(r["server_metrics"]["breakdown_ms"].get(key) or 0.0, 0.0) for r in steps]
        if any(heights):
            ax.bar(range(len(steps)), heights, bottom=bottom, label=name)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xticks(range(len(steps)), labels, fontsize=7)
    ax.set_ylabel("mean latency (ms)")
    ax.set_title("Where the time goes (the servers' own metrics)")
    ax.legend(fontsize=7)
    return _png(figure)
