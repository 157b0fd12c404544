"""One results.json measurement from one locust step: exact percentiles from the HDR histogram,
answer checks, throughput, stability and the load generator's own state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploybench.loadtest import histogram, intervals
from deploybench.loadtest.process import LocustOutput, LocustRun
from deploybench.serving import targets

SATURATED_CPU_PERCENT = 90.0  # locust's own threshold (runners.CPU_WARNING_THRESHOLD)
STABLE_WITHIN = 0.10  # perf_analyzer's rule: the last three windows within 10 %


def stability(timeline: list[list[float]], seconds: float) -> dict[str, Any] | None:
    """Throughput and mean latency of the window's three thirds; stable when each figure's
    spread is within 10 %. None when the window is too short (under 3 s)."""
    whole = min(int(seconds), len(timeline))
    if whole < 3:
        return None
    size = whole // 3
    thirds = [timeline[i * size:(i + 1) * size] for i in range(3)]
    rps, mean_ms = [], []
    for third in thirds:
        done = sum(slot[0] for slot in third)
        good = done - sum(slot[1] for slot in third)
        rps.append(round(done / size, 2))
        mean_ms.append(round(sum(slot[2] for slot in third) / good, 3) if good else None)

    def spread(values: list[float | None]) -> float | None:
        if any(v is None or v <= 0 for v in values):
            return None
        return max(values) / min(values) - 1  # type: ignore[type-var, operator]

    rps_spread, latency_spread = spread(rps), spread(mean_ms)
    stable = (rps_spread is not None and latency_spread is not None
              and rps_spread <= STABLE_WITHIN and latency_spread <= STABLE_WITHIN)
    return {"stable": stable, "window_rps": rps, "window_mean_ms": mean_ms}


def locust_figures(stats_json: Path) -> dict[str, Any] | None:
    """Locust's own figures from its --json-file, kept beside ours as a cross-check: its
    percentiles come from response times rounded to about two significant digits, and its
    window runs until the users are stopped (a few ms after ours closes)."""
    try:
        entries = json.loads(stats_json.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    buckets: dict[float, int] = {}
    for entry in entries:
        for value, count in entry.get("response_times", {}).items():
            buckets[float(value)] = buckets.get(float(value), 0) + int(count)
    total = sum(buckets.values())

    def percentile(fraction: float) -> float | None:
        if not total:
            return None
        seen = 0
        for value in sorted(buckets):
            seen += buckets[value]
            if seen >= fraction * total:
                return value
        return None

    return {"requests": sum(int(e.get("num_requests", 0)) for e in entries),
            "failures": sum(int(e.get("num_failures", 0)) for e in entries),
            "p50_ms": percentile(0.50), "p99_ms": percentile(0.99),
            "p99_9_ms": percentile(0.999)}


def by_length(tally: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """A text model's latency by sequence-length bucket: p50 and p99 of the correct answers
    with their 95% intervals, buckets in length order; None where requests have no length."""
    if not tally or not tally.get("by_length"):
        return None
    rows = []
    for key, text in tally["by_length"].items():
        low, high = (int(n) for n in key.split("-"))
        latencies = histogram.decode(text)
        figures = histogram.latency_ms(latencies)
        rows.append({"low": low, "high": high, "samples": latencies.get_total_count(),
                     "p50": figures["p50"], "p99": figures["p99"],
                     "p50_ci95": intervals.percentile_interval(latencies, 50.0),
                     "p99_ci95": intervals.percentile_interval(latencies, 99.0)})
    return sorted(rows, key=lambda row: row["low"])


def build(run: LocustRun, output: LocustOutput, scenario: str, level: float, level_unit: str,
          run_dir: Path, endpoint: str) -> dict[str, Any]:
    """The measurement of one step; `status` is "failed" (with a reason) when locust gave no
    figures."""
    files = {key: _relative(path, run_dir) for key, path in output.files.items()
             if path.is_file()}
    base: dict[str, Any] = {
        "kind": "load", **targets.get(run.target).describe(run.protocol), "model": run.model,
        "scenario": scenario, "level": level, "level_unit": level_unit,
        "endpoint": endpoint, "batch_size": run.batch_size, "users": run.users,
        "warmup_s": run.warmup_seconds, "locust_files": files,
    }
    summary = output.summary
    if summary is None or summary.get("window", {}).get("seconds") is None:
        why = "locust wrote no summary"
        if summary and summary.get("samples_error"):
            why = summary["samples_error"]
        return {**base, "status": "failed",
                "reason": f"{why} (exit {output.returncode}): {output.log_tail()}"}
    tallies = summary.get("requests", {})
    tally = next(iter(tallies.values()), None) if len(tallies) == 1 else None
    duration = float(summary["window"]["seconds"])
    latencies = histogram.decode(tally["histogram"] if tally else None)
    loadgen = summary.get("loadgen", {})
    cpu = loadgen.get("cpu_percent")
    saturated = bool(summary.get("locust_cpu_warning") or loadgen.get("cpu_warnings")
                     or output.cpu_warning_logged
                     or (cpu is not None and cpu > SATURATED_CPU_PERCENT))
    requests = int(tally["requests"]) if tally else 0
    failures = int(tally["failures"]) if tally else 0
    measurement: dict[str, Any] = {
        **base,
        "status": "ok",
        "duration_s": round(duration, 3),
        "requests": requests,
        "failures": failures,
        "wrong_answers": int(tally["wrong_answers"]) if tally else 0,
        "nonfinite_answers": int(tally.get("nonfinite_answers", 0)) if tally else 0,
        # goodput: correct answers per second ("fast but wrong" earns nothing)
        "throughput_rps": round((requests - failures) / duration, 2) if duration else 0.0,
        "latency_ms": histogram.latency_ms(latencies),
        "latency_ci95_ms": intervals.percentile_intervals(latencies),
        "latency_by_length_ms": by_length(tally),
        "errors": tally["errors"] if tally else {},
        "loadgen_saturated": saturated,
        "loadgen_cpu_percent": cpu,
        "stability": stability(tally["timeline"], duration) if tally else None,
        "locust": locust_figures(output.files["json"]),
        "heavy_modules_in_locust": summary.get("heavy_modules", []),
    }
    if summary.get("early_stop"):
        measurement["early_stop"] = summary["early_stop"]
    if summary.get("workers"):
        measurement["loadgen_workers"] = [
            {"worker": worker, "requests": int(own["requests"]), "failures": int(own["failures"]),
             "p99_ms": histogram.latency_ms(histogram.decode(own["histogram"])).get("p99")}
            for worker, tallies in sorted(summary["workers"].items())
            for own in tallies.values()]
    if run.rate_per_user > 0:
        scheduled = int(tally["scheduled"]) if tally else 0
        measurement.update({
            "target_rps": level,
            "scheduled_rps": round(scheduled / duration, 2) if duration else 0.0,
            "completed_rps": round(requests / duration, 2) if duration else 0.0,
            "service_latency_ms": histogram.latency_ms(
                histogram.decode(tally["service_histogram"] if tally else None)),
            "in_flight_at_end": sum(summary.get("in_flight_at_end", {}).values()),
            "in_flight_limit_hits": loadgen.get("in_flight_limit_hits", 0),
        })
    return measurement


# a step's figures: dropped when its server went away mid-step
_FIGURES = ("throughput_rps", "latency_ms", "stability", "locust", "loadgen_saturated",
            "loadgen_cpu_percent", "heavy_modules_in_locust", "scheduled_rps", "completed_rps",
            "service_latency_ms", "in_flight_at_end", "in_flight_limit_hits", "target_rps",
            "latency_ci95_ms", "early_stop")


def aborted(measurement: dict[str, Any], reason: str) -> dict[str, Any]:
    """A step stopped because its server went away: failed, with what was counted before the
    stop (requests, failures and their reasons) but no latency or throughput figures, which
    would mix the server's answers with refused connections."""
    kept = ("requests", "failures", "wrong_answers", "nonfinite_answers", "errors",
            "duration_s")
    base = {k: v for k, v in measurement.items()
            if k not in kept and k not in ("status", "reason") and k not in _FIGURES}
    return {**base, "status": "failed", "reason": reason, "server_gone": True,
            **{k: measurement[k] for k in kept if k in measurement}}


# other processes (not the server, not locust) taking more than this share of one core during a
# step make it noisy: on a shared machine its figures may be the neighbours', not the server's
NOISY_OTHER_PERCENT = 50.0


def noise_reasons(measurement: dict[str, Any]) -> list[str]:
    """Why a step's figures may not be the server's own (empty: a quiet step)."""
    reasons = []
    other = (measurement.get("cpu") or {}).get("other_percent")
    if other is not None and other > NOISY_OTHER_PERCENT:
        reasons.append(f"other processes took {other:.0f}% of a core (over "
                       f"{NOISY_OTHER_PERCENT:.0f}%)")
    if measurement.get("loadgen_saturated"):
        reasons.append("the load generator was saturated")
    return reasons


# throughput varying across repeats of the same step by more than this share of its median:
# the machine, not the server, decides the figure
NOISY_SPREAD = 0.2


def spreads(measurements: list[dict[str, Any]], repeats: int) -> list[dict[str, Any]]:
    """For each step measured in every repeat (same target, protocol, model, scenario, level):
    throughput and p99 as [min, median, max] across the repeats, and whether their spread
    makes it noisy (kind "load-spread")."""
    from statistics import median

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for m in measurements:
        if m.get("status") == "ok" and m.get("repeat"):
            key = (m["target"], m["protocol"], m["model"], m["scenario"], m["level"])
            groups.setdefault(key, []).append(m)
    found = []
    for group in groups.values():
        if len({m["repeat"] for m in group}) < repeats:
            continue  # a rate one repeat's search did not try
        rates = sorted(m["throughput_rps"] for m in group)
        p99s = sorted(m["latency_ms"]["p99"] for m in group if m["latency_ms"]["p99"] is not None)
        middle = median(rates)
        spread = (rates[-1] - rates[0]) / middle if middle else None
        noisy = spread is None or spread > NOISY_SPREAD
        first = group[0]
        found.append({
            "kind": "load-spread", **{k: first[k] for k in (
                "target", "target_label", "framework", "software", "protocol", "protocol_label",
                "model", "scenario", "level", "level_unit") if k in first},
            "repeats": len(group), "throughput_rps": [rates[0], middle, rates[-1]],
            "p99_ms": [p99s[0], median(p99s), p99s[-1]] if p99s else None,
            "throughput_spread": None if spread is None else round(spread, 4),
            "noisy": noisy,
            "why": (f"throughput {rates[0]:g}-{rates[-1]:g} req/s across {len(group)} repeats: "
                    f"{100 * spread:.0f}% of its median" if spread is not None
                    else "no throughput to compare"),
        })
    return found


def rate_passes(measurement: dict[str, Any], bound_ms: float, min_completed_ratio: float
                ) -> tuple[bool, str]:
    """An open-loop step passes when every answer was right, p99 <= the bound, and the server
    kept up (completed close to scheduled, the generator kept its schedule). With early
    stopping the p99 is judged by its interval: an undecided step does not pass, and its
    verdict starts with "inconclusive"."""
    if measurement.get("status") != "ok":
        return False, measurement.get("reason", "failed")
    if measurement["requests"] == 0:
        return False, "no answers"
    if measurement["failures"]:
        return False, f"{measurement['failures']} failures"
    p99 = measurement["latency_ms"]["p99"]
    early = measurement.get("early_stop")
    if early:
        low, high = early["p99_interval_ms"]
        shown = f"p99 {p99} ms, 95% interval [{low}, {high}] ms over {early['requests']} requests"
        if early["decision"] == "inconclusive":
            return False, f"inconclusive: {shown} after {early['seconds']} s"
        if early["decision"] == "fail":
            return False, f"{shown} > {bound_ms:g} ms"
    elif p99 is None or p99 > bound_ms:
        return False, f"p99 {p99} ms > {bound_ms:g} ms"
    scheduled = measurement.get("scheduled_rps") or 0.0
    if scheduled and measurement["completed_rps"] < min_completed_ratio * scheduled:
        return False, (f"completed {measurement['completed_rps']} rps of "
                       f"{scheduled} scheduled")
    if measurement.get("in_flight_limit_hits"):
        return False, "the load generator hit its in-flight limit"
    if early:
        return True, f"{shown} <= {bound_ms:g} ms"
    return True, f"p99 {p99} ms <= {bound_ms:g} ms"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
