"""The edge tables, per model: speed and memory per measurement; size, accuracy and mobile
readiness per artifact; then each TFLite variant's operators and any errors."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploybench.formatting import kib, mib, ms_compact, span, us_compact

STATUS_STYLE = {"ok": "green", "failed": "red", "not-edge-ready": "yellow",
                "not-exported": "yellow"}
BASELINE_LABELS = {"tensorflow": "tf", "torch": "torch", "torch-export": "eager",
                   "aoti": "aoti"}
LEGEND = (
    "fp32..int8: the Keras twin's TFLite variants under LiteRT (xnn: XNNPACK delegate on/off); "
    "pt-fp32..: the PyTorch twin's, converted by litert-torch, under the same LiteRT; et-fp32, "
    "et-int8: ExecuTorch programs (XNNPACK); onnx-torch, onnx-keras (-int8): each twin's ONNX "
    "under ONNX Runtime (CPU provider); tf: SavedModel in TensorFlow; torch: TorchScript in "
    "torch; eager: the torch.export program in torch; aoti: AOTInductor; ort-torch, ort-keras: "
    "the ONNX files in process. init: load + allocate; p50..p99: the inference call alone; "
    "peak MiB: peak RSS growth over load and runs."
)


def label(row: dict[str, Any]) -> str:
    """A short name for the row's artifact: the edge variant, or the baseline's runtime."""
    variant = row["variant"]
    if row["kind"] == "inprocess":
        if row["runtime"] == "onnxruntime" and variant:
            return variant.replace("onnx-", "ort-")
        return BASELINE_LABELS.get(row["runtime"], row["runtime"] or "-")
    if variant is None:
        return "-"
    return (variant.removeprefix("tflite-").replace("dynamic-", "dyn-")
            .replace("executorch-", "et-").replace("litert-torch-", "pt-"))


def styled(row: dict[str, Any]) -> str:
    text = escape(label(row))
    if row["status"] == "ok":
        return text
    style = STATUS_STYLE.get(row["status"] or "", "red")
    return f"[{style}]{text}[/{style}]"


def new_table(title: str, columns: list[str], left: int) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i < left else "right")
    return table


def speed_table(model: str, rows: list[dict[str, Any]]) -> Table:
    table = new_table(
        f"{model}: speed and memory, batch 1",
        ["model", "thr", "xnn", "init ms", "first ms", "p50 µs", "p90 µs", "p99 µs",
         "peak MiB"],
        left=3,
    )
    for r in sorted(rows, key=lambda r: r.get("repeat") or 1):  # one round after another
        latency = r["latency_ms"] or {}
        repeat = f" #{r['repeat']}" if (r.get("repeat") or 1) > 1 else ""  # its process
        table.add_row(
            styled(r) + repeat, "-" if r["threads"] is None else str(r["threads"]),
            "-" if r["xnnpack"] is None else ("on" if r["xnnpack"] else "off"),
            ms_compact(r["init_ms"]), ms_compact(r["first_ms"]),
            us_compact(latency.get("p50")), us_compact(latency.get("p90")),
            us_compact(latency.get("p99")),
            mib(r["peak_memory_growth_bytes"]),
        )
    return table


def quality_table(model: str, rows: list[dict[str, Any]]) -> Table:
    reference = next((r["reference_accuracy"] for r in rows if r["reference_accuracy"]), None)
    title = f"{model}: size, accuracy and readiness"
    if reference is not None:
        title += f" (reference accuracy {reference:.4f})"
    table = new_table(title, ["model", "KiB", "accuracy", "top-1 agr", "max abs diff",
                              "edge-ready"], left=1)  # ExecuTorch: XNNPACK's share
    groups: dict[tuple[str | None, str | None], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["runtime"]), []).append(r)
    for group in groups.values():
        ok = [r for r in group if r["status"] == "ok"]
        ready, share = group[0]["edge_ready"], group[0]["delegated_share"]
        # one row per artifact: a span where XNNPACK or the thread count changed a figure
        table.add_row(
            styled(group[0]), kib(group[0]["size_bytes"]),
            span([r["accuracy"] for r in ok], ".4f"),
            span([r["top1_agreement"] for r in ok], ".4f"),
            span([r["max_abs_diff"] for r in ok if r["max_abs_diff"] is not None], ".1e"),
            readiness(ready, share),
        )
    return table


def readiness(ready: bool | None, delegated_share: float | None) -> str:
    """A .tflite's edge-readiness (builtin ops only), or an ExecuTorch program's share of
    operators XNNPACK runs (all of them: green)."""
    if delegated_share is not None:
        text = f"XNNPACK {delegated_share:.0%}"
        return f"[green]{text}[/green]" if delegated_share == 1 else f"[yellow]{text}[/yellow]"
    return "-" if ready is None else ("[green]yes[/green]" if ready else "[yellow]NO[/yellow]")


def op_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each TFLite variant's operators, and each ExecuTorch program's readiness verdict."""
    lines: dict[str, str] = {}
    for r in rows:
        if r["kind"] != "edge" or r["variant"] in lines:
            continue
        if r["op_counts"]:
            ops = ", ".join(f"{name} x{n}" if n > 1 else name
                            for name, n in r["op_counts"].items())
            lines[r["variant"]] = f"{escape(label(r))} ops: {escape(ops)}"
        elif r["delegated_share"] is not None:
            lines[r["variant"]] = f"{escape(label(r))}: {escape(r['verdict'] or '')}"
    return list(lines.values())


def render(rows: list[dict[str, Any]], console: Console) -> None:
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        console.print(speed_table(model, mine))
        console.print(quality_table(model, mine))
        console.print(LEGEND, soft_wrap=True, highlight=False, style="dim")
        for line in op_lines(mine):
            console.print(line, soft_wrap=True, highlight=False)
        for r in mine:
            if r["status"] != "ok":
                what = " ".join(str(x) for x in (r["variant"] or model, r["runtime"] or "",
                                                 r["threads"] or "") if x)
                console.print(f"[red]{escape(what)}[/red]: {escape(r['error'] or '')}",
                              soft_wrap=True, highlight=False)
        console.print()
