"""Read a results.json into the figures a report shows: best rate under the latency bound,
the answer lines, the tables. Every claim is generated from a measured figure."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from deploybench.formatting import configuration_text, ms, req_per_s
from deploybench.manifest import format_label
from deploybench.matrix import matrix_lines

DEFAULT_BOUND_MS = 100.0


def server_label(row: dict[str, Any]) -> str:
    """A server's display name, as its record carries it (the registry's, when measured):
    "TorchServe REST .npy"; the bare names for a record without labels."""
    name = row.get("target_label") or row["target"]
    protocol = row.get("protocol_label") or row.get("protocol")
    return f"{name} {protocol}" if protocol else name


def rows(results: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [m for m in results.get("measurements", []) if m.get("kind") == kind]


def latency(row: dict[str, Any], key: str) -> float | None:
    return (row.get("latency_ms") or {}).get(key)


def clean(row: dict[str, Any]) -> bool:
    """A step counts only if every answer came back right."""
    return not row.get("failures") and not row.get("wrong_answers") and row.get("requests", 0) > 0


@dataclass
class Best:
    model: str
    target: str
    protocol: str
    label: str  # the server's display name, with its protocol's
    throughput_rps: float | None  # None: nothing stayed under the bound
    p99_ms: float | None
    scenario: str | None
    level: Any
    open_loop: bool = False
    framework: str | None = None
    software: str | None = None  # the server software (KServe: one target per framework)
    protocol_label: str | None = None
    cpu_s_per_1k: float | None = None  # the server's, at the best step
    # the best step's figures, or a failure above it, may be the machine's (measurement noise)
    noisy: bool = False
    # open loop: the lowest rate above the best that failed (the search's bracket), if any
    failed_above_rps: float | None = None
    duration_s: float | None = None  # the best step's window
    step: dict[str, Any] | None = field(default=None, repr=False)  # the best step's record


def rate_interval(best: Best) -> tuple[float, float]:
    """95% counting interval of a measured rate: n answers in t seconds, n +- 1.96 sqrt(n)."""
    answers = best.throughput_rps * best.duration_s
    spread = 1.96 * math.sqrt(answers)
    return (answers - spread) / best.duration_s, (answers + spread) / best.duration_s


def ratio_interval(top: Best, other: Best) -> tuple[float, float | None]:
    """The range of top's rate over other's that the measurements allow: from the two rate
    searches' brackets (each server's capacity lies between its best rate and the first it
    failed above; None: top never failed, no upper end), or from the counting intervals."""
    if top.open_loop and other.open_loop:
        low = top.level / other.failed_above_rps if other.failed_above_rps else 0.0
        high = top.failed_above_rps / other.level if top.failed_above_rps else None
        return low, high
    (top_low, top_high), (other_low, other_high) = rate_interval(top), rate_interval(other)
    return top_low / other_high, top_high / other_low


def ratio_text(top: Best, other: Best) -> str:
    """ "1.3x Y (95% interval 1.1x-1.5x)" style: the ratio and what the measurements allow."""
    low, high = ratio_interval(top, other)
    bracket = "the rate searches allow" if top.open_loop and other.open_loop else "95% interval"
    upper = f"{high:.2g}x" if high is not None else "unbounded"
    return (f"{top.throughput_rps / other.throughput_rps:.2g}x {other.label} "
            f"({req_per_s(other.throughput_rps)}; {bracket} {low:.2g}x-{upper})")


def significantly_above(top: Best, other: Best) -> tuple[bool, str]:
    """Whether `top` sustains more than `other` beyond the uncertainty, and why not if not: a
    noisy step decides nothing; two rate searches differ only where `top` passed a rate
    `other` failed; otherwise the rates' counting intervals must not overlap."""
    if top.noisy or other.noisy:
        return False, "a noisy step: other processes or the load generator took the machine"
    if top.open_loop and other.open_loop:
        if other.failed_above_rps is not None and top.level >= other.failed_above_rps:
            return True, ""
        return False, "within the rate search's resolution"
    if not (top.duration_s and other.duration_s):
        return False, "no measured window to judge by"
    if rate_interval(top)[0] > rate_interval(other)[1]:
        return True, ""
    return False, "within the counting noise of the two rates"


def bound_of(results: dict[str, Any]) -> float:
    for row in rows(results, "load"):
        if row.get("bound_ms"):
            return float(row["bound_ms"])
    return DEFAULT_BOUND_MS


def best_under_bound(results: dict[str, Any], bound_ms: float) -> list[Best]:
    """Per model, server and protocol: the highest throughput whose p99 stays under the bound,
    counting only steps with no failures. Open-loop (Poisson) steps are preferred where the run
    has them: a closed loop sends less exactly when the server stalls, so its p99 flatters."""
    series: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows(results, "load"):
        series[(row["model"], row["target"], row["protocol"])].append(row)
    # `load --repeat N`: a step whose figures spread too far across the repeats is noisy
    spread_noisy = {(r["model"], r["target"], r["protocol"], r["level"])
                    for r in rows(results, "load-spread") if r.get("noisy")}
    best: list[Best] = []
    for (model, target, protocol), steps in sorted(series.items()):
        passing = [
            s for s in steps
            if clean(s) and latency(s, "p99") is not None and latency(s, "p99") <= bound_ms
            and s.get("passed", True)  # an open-loop step that fell behind its rate fails
        ]
        open_loop = [s for s in passing if s.get("level_unit") == "rps"]
        top = max(open_loop or passing, key=lambda s: s.get("throughput_rps", 0), default=None)
        best.append(Best(
            model, target, protocol, server_label(steps[0]),
            top["throughput_rps"] if top else None,
            latency(top, "p99") if top else None,
            top["scenario"] if top else None,
            top["level"] if top else None,
            bool(top and top.get("level_unit") == "rps"),
            steps[0].get("framework"), steps[0].get("software"),
            steps[0].get("protocol_label") or protocol,
            top.get("server_cpu_s_per_1k") if top else None,
            # noisy where its best step is, or where a step that could have beaten it failed
            # (a failure under noise says nothing about the server)
            any(s.get("noisy") or (model, target, protocol, s["level"]) in spread_noisy
                for s in steps if top is None or s is top or s["level"] > top["level"]),
            min((s["level"] for s in steps if top and s.get("level_unit") == "rps"
                 and top.get("level_unit") == "rps" and s.get("passed") is False
                 and s["level"] > top["level"]), default=None),
            top.get("duration_s") if top else None,
            step=top,
        ))
    return best


def unavailable_rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{display name: server record} of every server that could not be measured."""
    return {server_label({**r, "protocol": None}): r
            for r in rows(results, "server") if r.get("status") != "up"}


def unavailable_servers(results: dict[str, Any]) -> dict[str, str]:
    """{display name: why} of every server that could not be measured."""
    return {name: row.get("reason", "") for name, row in unavailable_rows(results).items()}


def server_lines(results: dict[str, Any]) -> list[str]:
    bound = bound_of(results)
    lines = []
    missing = unavailable_servers(results)
    by_model: dict[str, list[Best]] = defaultdict(list)
    for best in best_under_bound(results, bound):
        by_model[best.model].append(best)
    for model, bests in sorted(by_model.items()):
        measured = sorted((b for b in bests if b.throughput_rps),
                          key=lambda b: b.throughput_rps, reverse=True)
        head = f"Server, p99 under {bound:g} ms ({model}): "
        if not measured:
            lines.append(head + "no server kept p99 under the bound with every answer right.")
            continue
        top = measured[0]
        how = "open-loop Poisson arrivals" if top.open_loop else "closed loop"
        never = "".join(f"; {b.label} never stayed under it" for b in bests
                        if not b.throughput_rps)
        noisy = [b for b in bests if b.noisy]
        if noisy and len(bests) > 1:  # a side measured under noise: no winner, the figures
            lines.append(head + "no significant difference between "
                         + ", ".join(f"{b.label} ({req_per_s(b.throughput_rps)})"
                                     for b in measured)
                         + " (a noisy step: other processes or the load generator took the "
                         + "machine, for " + ", ".join(b.label for b in noisy) + "); "
                         + f"{top.label} p99 {ms(top.p99_ms)}, {how}{never}.")
            continue
        tied = [(o, significantly_above(top, o)[1]) for o in measured[1:]
                if not significantly_above(top, o)[0]]
        if tied:  # no winner named where the margin is within the uncertainty
            text = ("no significant difference between "
                    + ", ".join(f"{b.label} ({req_per_s(b.throughput_rps)})"
                                for b in [top, *(o for o, _ in tied)])
                    + f" ({tied[0][1]}); {top.label} p99 {ms(top.p99_ms)}, {how}")
        else:
            text = (f"{top.label} sustains {req_per_s(top.throughput_rps)}"
                    f" (p99 {ms(top.p99_ms)}, {how})")
        for other in measured[1:]:
            if not any(other is o for o, _ in tied):
                text += f", {ratio_text(top, other)}"
        text += never
        lines.append(head + text + ".")
    if not by_model:
        lines.append("Server: no load measurement in this run.")
    for name, reason in sorted(missing.items()):
        lines.append(f"{name} could not be measured here: {reason}")
    return lines


def runtime_name(best: Best) -> str:
    """What runs the model inside a server that hosts several (KServe-PyTorch -> PyTorch,
    KServe-ONNX Runtime -> ONNX Runtime): its label without the server's name."""
    name = best.label.removesuffix(f" {best.protocol_label}") if best.protocol_label else \
        best.label
    return name.removeprefix(f"{best.software}-") if best.software else name


def same_server_lines(results: dict[str, Any]) -> list[str]:
    """One server hosting each framework's runtime (KServe) with the same code: the difference
    between its rows is the runtime's (the framework's own, or the PyTorch twin's ONNX in ONNX
    Runtime), not the server's. Per model and protocol: throughput under the bound and the
    server's CPU-seconds per 1k requests, side by side."""
    bound = bound_of(results)
    groups: dict[tuple[str, str, str], dict[str, Best]] = defaultdict(dict)
    for best in best_under_bound(results, bound):
        if best.software and best.framework:
            groups[(best.model, best.software, best.protocol)][best.target] = best
    lines = []
    tensorflow_missing = [name for name, row in unavailable_rows(results).items()
                          if row.get("framework") == "tensorflow"]
    for (model, software, _), pair in sorted(groups.items()):
        if len(pair) < 2:
            continue
        ranked = sorted(pair.values(), key=lambda b: b.throughput_rps or 0, reverse=True)
        first, second = ranked[0], ranked[1]
        what = ("two frameworks" if len(ranked) == 2 and {b.framework for b in ranked}
                == {"tensorflow", "pytorch"} else f"{len(ranked)} runtimes")
        text = (f"Same server, {what} ({model}, {software} {first.protocol_label}, "
                f"p99 under {bound:g} ms): ")
        parts = []
        for best in ranked:
            rate = req_per_s(best.throughput_rps) if best.throughput_rps else "nothing under it"
            cpu = (f", {best.cpu_s_per_1k:.2f} CPU-s per 1k requests"
                   if best.cpu_s_per_1k is not None else "")
            parts.append(f"{runtime_name(best)} {rate}{cpu}")
        text += "; ".join(parts)
        if first.throughput_rps and second.throughput_rps:
            above, why = significantly_above(first, second)
            text += (f" ({first.throughput_rps / second.throughput_rps:.2g}x)" if above
                     else f" (no significant difference: {why})")
        if tensorflow_missing and any(b.framework == "tensorflow" for b in ranked):
            text += (f"; {', '.join(tensorflow_missing)} could not run here, so this is "
                     "TensorFlow's serving figure")
        lines.append(text + ".")
    return lines


def edge_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    edge = [r for r in rows(results, "edge") if r.get("status", "ok") == "ok"]
    inprocess = [r for r in rows(results, "inprocess") if r.get("status", "ok") == "ok"]
    for model in sorted({r["model"] for r in edge}):
        everything = [r for r in edge if r["model"] == model]
        threads = min(r["threads"] for r in everything)
        # LiteRT, the mission's edge runtime: the Keras twin's files (TensorFlow's own path),
        # or, for a model with no TensorFlow side (a user's PyTorch model), litert-torch's
        litert = [r for r in everything if r.get("runtime") == "litert"]
        side = "tensorflow" if any(r.get("framework") == "tensorflow" for r in litert) else (
            "pytorch")
        mine = [r for r in litert if (r.get("framework") or "tensorflow") == side]
        path = ("TensorFlow -> LiteRT" if side == "tensorflow"
                else "PyTorch -> LiteRT (litert-torch)")
        candidates = [r for r in mine if r["threads"] == threads and r.get("edge_ready")]
        fp32 = next((r for r in mine if r["variant"].endswith("fp32")), None)
        if not candidates:
            lines.append(f"Edge ({model}): no variant is edge-ready (builtin ops only).")
            continue
        reference = max((r.get("accuracy") or 0 for r in candidates if "fp32" in r["variant"]),
                        default=None)
        acceptable = [r for r in candidates if reference is None or r.get("accuracy") is None
                      or reference - r["accuracy"] <= 0.02]
        pick = min(acceptable or candidates, key=lambda r: (r["size_bytes"], latency(r, "p50")))
        text = (f"Edge ({model}, {threads} thread{'s' if threads > 1 else ''}), {path}: "
                f"{pick['variant']} is edge-ready, {pick['size_bytes'] / 1024:,.1f} KiB")
        if fp32 and fp32 is not pick and pick["size_bytes"]:
            text += f" ({fp32['size_bytes'] / pick['size_bytes']:.1f}x smaller than fp32)"
        text += f", p50 {ms(latency(pick, 'p50'))}"
        if pick.get("accuracy") is not None:
            text += f", accuracy {pick['accuracy']:.3f}"
        elif pick.get("top1_agreement") is not None:
            text += f", top-1 agreement {pick['top1_agreement']:.3f}"
        # one figure per format: the median of its fresh processes (--edge-repeats)
        by_format: dict[str, list[float]] = defaultdict(list)
        for base in inprocess:
            if base["model"] == model and base["threads"] == threads and latency(base, "p50"):
                by_format[base["variant"]].append(latency(base, "p50"))
        baselines = [f"{format_label(variant)} {ms(statistics.median(p50s))}"
                     for variant, p50s in by_format.items()]
        if baselines:
            text += "; in-process p50: " + ", ".join(baselines)
        lines.append(text + ".")
        lines += int8_lines(results, model, [r for r in mine if r["threads"] == threads])
        if len(model_frameworks(results, model)) > 1:  # one framework: nothing to set beside
            lines += framework_edge_lines(model, [r for r in everything
                                                  if r["threads"] == threads])
    if not edge:
        lines.append("Edge: no edge measurement in this run.")
    return lines


def _fastest(rows_: list[dict[str, Any]], variant: str) -> dict[str, Any] | None:
    timed = [r for r in rows_ if r["variant"] == variant and latency(r, "p50")]
    return min(timed, key=lambda r: latency(r, "p50"), default=None)


def _quality(row: dict[str, Any]) -> str:
    if row.get("accuracy") is not None:
        return f"accuracy {row['accuracy']:.3f}"
    return f"top-1 agreement {row['top1_agreement']:.3f}"


def framework_edge_lines(model: str, rows_: list[dict[str, Any]]) -> list[str]:
    """The two frameworks' edge paths side by side, at each precision, on the same threads:
    TensorFlow -> LiteRT (at its faster XNNPACK setting) against PyTorch -> ExecuTorch."""
    if not any(r.get("runtime") == "executorch" for r in rows_):
        return [f"Edge ({model}): PyTorch's edge path (ExecuTorch) was not measured in this "
                "run."]
    lines = []
    for precision in ("fp32", "int8"):
        lite, et = _fastest(rows_, f"tflite-{precision}"), _fastest(rows_,
                                                                    f"executorch-{precision}")
        if et is None:
            continue
        threads = et["threads"]
        text = (f"Edge {precision} ({model}, {threads} thread{'s' if threads > 1 else ''}): "
                f"PyTorch -> ExecuTorch {et['size_bytes'] / 1024:,.1f} KiB, p50 "
                f"{ms(latency(et, 'p50'))}, {_quality(et)}")
        share = et.get("delegated_share")
        if share is not None:
            left = et.get("non_delegated_ops") or []
            text += f", XNNPACK runs {share:.0%} of its operators" + (
                f" ({', '.join(left)} on the portable kernels)" if left else "")
        if lite is not None:
            ratio = latency(lite, "p50") / latency(et, "p50")
            text += (f"; TensorFlow -> LiteRT {lite['size_bytes'] / 1024:,.1f} KiB, p50 "
                     f"{ms(latency(lite, 'p50'))}, {_quality(lite)}: ExecuTorch runs at "
                     f"{ratio:.2f}x LiteRT's speed")
        lines.append(text + ".")
    return lines


def int8_lines(results: dict[str, Any], model: str, rows_: list[dict[str, Any]]) -> list[str]:
    """Full-int8 against fp32 on the same threads, each at its faster setting (XNNPACK on or
    off): size, speed and top-1 agreement, and why int8 may not be faster on this CPU."""
    int8, fp32 = _fastest(rows_, "tflite-int8"), _fastest(rows_, "tflite-fp32")
    if not (int8 and fp32 and int8.get("size_bytes")):
        return []
    speedup = latency(fp32, "p50") / latency(int8, "p50")
    text = (f"Full-int8 vs fp32 ({model}, {int8['threads']} thread"
            f"{'s' if int8['threads'] > 1 else ''}): {fp32['size_bytes'] / int8['size_bytes']:.2f}x"
            f" smaller, p50 {speedup:.2f}x as fast")
    agreement = int8.get("top1_agreement")
    if agreement is not None:
        text += f", top-1 agreement with fp32's reference {agreement:.3f}"
    dot_product = results.get("environment", {}).get("cpu_int8_dot_product")
    if speedup < 1.3 and dot_product == []:
        text += (". This CPU has no int8 dot-product instructions (VNNI, AMX, Arm dotprod), so "
                 "int8 runs at about fp32 speed here: time it on the target device")
    return [text + "."]


def parity_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    exports = rows(results, "export")
    for model in sorted({r["model"] for r in exports}):
        mine = [r for r in exports if r["model"] == model]
        failed = [r for r in mine if r["status"] != "ok"]
        fp32 = [r["max_abs_diff"] for r in mine
                if not r.get("quantized") and r.get("max_abs_diff") is not None]
        seeded = any(r.get("min_top1_agreement") for r in mine)
        drops = [(r["accuracy_drop"], r["format"]) for r in mine
                 if r.get("quantized") and r.get("accuracy_drop") is not None]
        agreements = [(r["top1_agreement"], r["format"]) for r in mine
                      if r.get("quantized") and r.get("top1_agreement") is not None]
        if failed:
            names = ", ".join(f"{r['format']} ({r.get('reason')})" for r in failed)
            lines.append(f"Export and parity ({model}): FAILED: {names}.")
            continue
        text = f"Export and parity ({model}): all {len(mine)} artifacts pass"
        if fp32:
            tolerance = mine[0].get("tolerance", 1e-4)
            text += f"; fp32 max abs diff {max(fp32):.2g} (tolerance {tolerance:g})"
        if seeded and agreements:  # seeded weights: accuracy means nothing
            agreement, fmt = min(agreements)
            text += f"; lowest quantized top-1 agreement {agreement:.3f} ({fmt})"
        elif drops:
            drop, fmt = max(drops)
            text += f"; worst quantized accuracy drop {drop * 100:.1f} points ({fmt})"
        lines.append(text + ".")
    if not exports:
        lines.append("Export and parity: no export in this run.")
    return lines


def nonfinite_lines(results: dict[str, Any]) -> list[str]:
    """A server whose answers held NaN or Infinity, named: they are wrong answers whatever
    else was checked (a server answering garbage with a 200 must not pass for a fast one)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows(results, "load"):
        if row.get("nonfinite_answers"):
            counts[(row["model"], server_label(row))] += row["nonfinite_answers"]
    return [f"{model}: {label} answered {count} request(s) with NaN or Infinity in the "
            "logits (counted as wrong answers)." for (model, label), count in counts.items()]


FRAMEWORK_NAMES = {"tensorflow": "TensorFlow", "pytorch": "PyTorch"}


def model_frameworks(results: dict[str, Any], model: str) -> list[str]:
    """The frameworks a model has a side in, as its export rows say (a zoo model: both; a
    run without export rows: assumed both)."""
    for row in rows(results, "export"):
        if row["model"] == model and row.get("model_frameworks"):
            return list(row["model_frameworks"])
    return ["pytorch", "tensorflow"]


def comparison_lines(results: dict[str, Any]) -> list[str]:
    """What was compared, for a user's model: one framework's paths (no line compares
    frameworks then), or the user's two models, checked to agree; and where the samples were
    seeded random inputs, that accuracy means nothing."""
    lines = []
    seen = {}
    for row in rows(results, "export"):
        if row.get("model_source") == "user":
            seen.setdefault(row["model"], row)
    for model, row in seen.items():
        frameworks = [FRAMEWORK_NAMES.get(f, f) for f in row.get("model_frameworks") or []]
        if len(frameworks) == 1:
            line = (f"What was compared ({model}, your model): {frameworks[0]}'s paths only, its "
                    f"formats, runtimes and servers; no framework comparison was made.")
        else:
            line = (f"What was compared ({model}, your models): your "
                    f"{' and '.join(frameworks)} models, checked to agree on the held-out "
                    f"samples, through each framework's paths.")
        if row.get("random_inputs"):
            line += (" Its samples are seeded random inputs: accuracy figures mean nothing, "
                     "only agreement with the model's own outputs does.")
        lines.append(line)
    return lines


def configuration_lines(results: dict[str, Any]) -> list[str]:
    """With a tuned profile, which configuration each server ran with (its server record's)."""
    profile = results.get("environment", {}).get("profile")
    configured = [r for r in rows(results, "server")
                  if r.get("status") == "up" and r.get("configuration") is not None]
    if not profile or not configured:
        return []
    source = profile.get("source", "a profile") if isinstance(profile, dict) else profile
    return [f"Configurations (tuned profile {source}; a server it does not name ran with "
            ".env's): " + "; ".join(f"{server_label(r)}: {configuration_text(r['configuration'])}"
                                  for r in configured) + "."]


def answer_lines(results: dict[str, Any]) -> list[str]:
    return (comparison_lines(results) + nonfinite_lines(results) + server_lines(results)
            + configuration_lines(results) + same_server_lines(results)
            + edge_lines(results) + matrix_lines(results) + parity_lines(results))


def verdict_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model, server and protocol (the report's verdict table). Every figure
    beside the best rate is its own step's (requests, failures, CPU, memory); what every step
    of that server and protocol added up to, overload probes of the rate search included,
    is kept apart under `run`, labelled as such."""
    bound = bound_of(results)
    table = []
    for best in best_under_bound(results, bound):
        steps = [r for r in rows(results, "load") if (r["model"], r["target"], r["protocol"])
                 == (best.model, best.target, best.protocol)]
        step = best.step or {}
        requests = sum(r.get("requests", 0) for r in steps)
        failures = sum(r.get("failures", 0) for r in steps)
        wrong = sum(r.get("wrong_answers", 0) for r in steps)
        memory = step.get("server_peak_rss_bytes")
        table.append({
            "model": best.model,
            "server": best.label,
            "best_rps": best.throughput_rps,
            "best_p99_ms": best.p99_ms,
            "levels": [
                {"scenario": r["scenario"], "level": r["level"],
                 "throughput_rps": r.get("throughput_rps"),
                 "p50": latency(r, "p50"), "p99": latency(r, "p99"),
                 "saturated": r.get("loadgen_saturated")}
                for r in steps
            ],
            # the best step's own figures (None where no step stayed under the bound)
            "requests": step.get("requests"),
            "failure_rate": _rate(step.get("failures", 0), step.get("requests")),
            "wrong_rate": _rate(step.get("wrong_answers", 0), step.get("requests")),
            "cpu_s_per_1k": step.get("server_cpu_s_per_1k"),
            "peak_rss_mb": memory / 2**20 if memory else None,
            "saturated": step.get("loadgen_saturated") if step else None,
            # every step of this server and protocol in the run
            "run": {"steps": len(steps), "requests": requests,
                    "failure_rate": _rate(failures, requests),
                    "wrong_rate": _rate(wrong, requests),
                    "saturated": any(r.get("loadgen_saturated") for r in steps)},
        })
    return table


def _rate(count: int, requests: int | None) -> float | None:
    return count / requests if requests else None
