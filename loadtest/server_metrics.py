"""Where the time goes, from the servers' own Prometheus metrics, read around each load step.

The locust process fetches the target's metrics page (the registry's `metrics` endpoint) just
before its measurement window opens and just after it closes (loadtest/locustfile.py); here
the two pages are parsed with prometheus_client's parser and the difference turned into the
step's server-side figures, as the target declares them (serving/targets.py `time_metrics`):

- a histogram (NAME_bucket/_sum/_count): mean, and p50/p99 interpolated within their bucket as
  Prometheus' histogram_quantile does, each with that bucket's bounds (its resolution);
- a cumulative-time counter over a request counter: the mean only;
- batch sizes: a histogram of sizes (TF Serving: rows per batch) or a counter per size label
  (the kit's TorchServe handler: requests per batch).

The breakdown splits the client's mean latency into queue, model, the rest of the server's own
time, and what the server never sees (network, HTTP front end, the client): client mean minus
the server's whole-request mean. Means add up; percentiles do not, so the split uses means.
A figure the server does not publish is named in `missing`; a page that cannot be read leaves
the load figures intact and says why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from deploybench.serving.targets import BatchFigure, ServerMetrics, TimeFigure

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PARTS = ("request", "queue", "model_input", "model", "model_output")
OPTIONAL_PARTS = ("model_input", "model_output")


def parse(text: str) -> Samples:
    """Every sample of an exposition page, by (name, sorted labels); a counter's `_total` is
    dropped, so a counter matches with or without it. ValueError on a page that is not the
    Prometheus text format."""
    samples: Samples = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name
                if family.type == "counter":
                    name = name.removesuffix("_total")
                samples[(name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    except (ValueError, TypeError, IndexError, KeyError) as error:
        raise ValueError(f"not a Prometheus metrics page: {error}") from None
    return samples


def _select(samples: Samples, name: str, model: str, model_label: str,
            fixed: Iterable[tuple[str, str]]) -> dict[tuple[tuple[str, str], ...], float]:
    wanted = dict(fixed)
    found = {}
    for (sample_name, labels), value in samples.items():
        if sample_name != name.removesuffix("_total"):
            continue
        label_map = dict(labels)
        if model_label and label_map.get(model_label) != model:
            continue
        if any(label_map.get(key) != value_ for key, value_ in wanted.items()):
            continue
        found[labels] = value
    return found


def _total(samples: Samples, name: str, model: str, model_label: str,
           fixed: Iterable[tuple[str, str]] = ()) -> float | None:
    found = _select(samples, name, model, model_label, fixed)
    return sum(found.values()) if found else None


def _increase(before: Samples, after: Samples, name: str, model: str,
              figure: TimeFigure | BatchFigure) -> float | None:
    """How much counter `name` grew over the step (None: not on the page after it)."""
    old, new = (_total(page, name, model, figure.model_label, figure.labels)
                for page in (before, after))
    return None if new is None else new - (old or 0.0)


def _buckets(samples: Samples, figure: TimeFigure | BatchFigure, model: str
             ) -> dict[float, float]:
    """Cumulative count by upper bound (le), summed over the other labels."""
    out: dict[float, float] = {}
    for labels, value in _select(samples, f"{figure.metric}_bucket", model,
                                 figure.model_label, figure.labels).items():
        bound = float(dict(labels)["le"])
        out[bound] = out.get(bound, 0.0) + value
    return out


def quantile(q: float, buckets: dict[float, float]) -> tuple[float, float, float] | None:
    """(value, bucket low, bucket high) of quantile q from cumulative bucket counts, linear
    within the bucket (Prometheus' histogram_quantile); the +Inf bucket answers its lower
    bound. None when the histogram is empty."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    low, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return low, low, bound
            inside = count - below
            share = (rank - below) / inside if inside > 0 else 1.0
            return low + (bound - low) * share, low, bound
        low, below = bound, count
    return low, low, math.inf


def time_figure(before: Samples, after: Samples, figure: TimeFigure, model: str
                ) -> dict[str, Any] | None:
    """The step's mean (and, from a histogram, p50/p99 with their buckets) in ms; None when
    the server published nothing for it."""
    scale = figure.unit_ms
    if figure.count:  # a cumulative-time counter over a request counter
        time_spent = _increase(before, after, figure.metric, model, figure)
        requests = _increase(before, after, figure.count, model, figure)
        if time_spent is None or requests is None:
            return None
        return {"count": int(round(requests)), "source": "counter (mean only)",
                "mean": round(time_spent / requests * scale, 4) if requests > 0 else None}
    sums = [_total(page, f"{figure.metric}_sum", model, figure.model_label, figure.labels)
            for page in (before, after)]
    if sums[1] is None:
        return None
    old, new = _buckets(before, figure, model), _buckets(after, figure, model)
    delta = {bound: count - old.get(bound, 0.0) for bound, count in new.items()}
    count = delta.get(math.inf, max(delta.values(), default=0.0))
    result: dict[str, Any] = {
        "count": int(round(count)), "source": "histogram",
        "mean": round((sums[1] - (sums[0] or 0.0)) / count * scale, 4) if count > 0 else None}
    for key, q in (("p50", 0.5), ("p99", 0.99)):
        found = quantile(q, delta)
        result[key] = None if found is None else round(found[0] * scale, 4)
        result[f"{key}_bucket"] = None if found is None else [
            round(found[1] * scale, 4),
            None if math.isinf(found[2]) else round(found[2] * scale, 4)]
    return result


def batch_sizes(before: Samples, after: Samples, figure: BatchFigure, model: str
                ) -> dict[str, float] | None:
    """How many batches of each size the step saw (a histogram's buckets: "<=upper bound"), or
    where the server counts only rows and batches, their mean size ({"mean": size})."""
    if figure.batches:  # rows (or requests) over batches: the mean only
        rows = _increase(before, after, figure.metric, model, figure)
        batches = _increase(before, after, figure.batches, model, figure)
        if rows is None or batches is None:
            return None
        return {"mean": round(rows / batches, 3)} if batches > 0 else {}
    if figure.size_label:  # a counter per size
        old = _select(before, figure.metric, model, figure.model_label, figure.labels)
        new = _select(after, figure.metric, model, figure.model_label, figure.labels)
        if not new:
            return None
        sizes: dict[str, float] = {}
        for labels, value in new.items():
            size = dict(labels).get(figure.size_label, "?")
            sizes[size] = sizes.get(size, 0.0) + value - old.get(labels, 0.0)
        return {size: count for size, count in sorted(sizes.items(), key=_size_order)
                if count > 0}
    new_buckets = _buckets(after, figure, model)
    if not new_buckets:
        return None
    old_buckets = _buckets(before, figure, model)
    out, below = {}, 0.0
    for bound in sorted(new_buckets):
        cumulative = new_buckets[bound] - old_buckets.get(bound, 0.0)
        if cumulative - below > 0:
            out["<=" + (f"{bound:g}" if not math.isinf(bound) else "inf")] = cumulative - below
        below = cumulative
    return out


def _size_order(item: tuple[str, float]) -> tuple[float, str]:
    try:
        return float(item[0]), item[0]
    except ValueError:
        return math.inf, item[0]


def step_figures(declared: ServerMetrics | None, pages: dict[str, Any] | None, model: str,
                 client_mean_ms: float | None) -> dict[str, Any]:
    """The step's `server_metrics` record: each declared figure, the batch sizes, what is
    missing and why, and the breakdown of the client's mean latency."""
    if declared is None:
        return {"available": False, "missing": ["the target declares no metrics"]}
    pages = pages or {}
    out: dict[str, Any] = {"available": False, "url": pages.get("url"), "missing": []}
    parsed = []
    for when in ("before", "after"):
        page = pages.get(when) or {}
        if page.get("error") or page.get("text") is None:
            out["missing"].append(f"the metrics page {when} the step: "
                                  f"{page.get('error') or 'not read'}")
            continue
        try:
            parsed.append(parse(page["text"]))
        except ValueError as error:
            out["missing"].append(f"the metrics page {when} the step: {error}")
    if len(parsed) < 2:
        return out
    before, after = parsed
    out["available"] = True
    for part in PARTS:
        figure: TimeFigure | None = getattr(declared, part)
        if figure is None and part in OPTIONAL_PARTS:
            continue  # most servers time the model's tensors with the model
        found = time_figure(before, after, figure, model) if figure else None
        if found is None:
            out["missing"].append(f"{part} time: " + (
                "not published by this server" if figure is None
                else f"{figure.metric} not on the page for model {model}"))
        else:
            out[f"{part}_ms"] = found | {"metric": figure.metric}
    if declared.batch is not None:
        sizes = batch_sizes(before, after, declared.batch, model)
        if sizes is None:
            out["missing"].append(f"batch sizes: {declared.batch.metric} not on the page")
        else:
            out["batch_sizes"] = sizes
            out["batch_counts"] = declared.batch.counts
    out["breakdown_ms"] = breakdown(out, client_mean_ms)
    return out


def breakdown(figures: dict[str, Any], client_mean_ms: float | None) -> dict[str, Any] | None:
    """The client's mean latency split in ms: queue, the model's tensors in and out, the
    model, the rest of the server's time, and outside the server (network, front end,
    client). A part the server does not publish is None and its time stays in the part that
    contains it."""
    def mean(part: str) -> float | None:
        return (figures.get(f"{part}_ms") or {}).get("mean")

    request, queue, model = mean("request"), mean("queue"), mean("model")
    moves = [m for m in (mean("model_input"), mean("model_output")) if m is not None]
    model_io = round(sum(moves), 4) if moves else None
    if client_mean_ms is None or not any(v is not None for v in (request, queue, model)):
        return None
    parts = (queue or 0.0) + (model or 0.0) + (model_io or 0.0)
    inside = request if request is not None else parts
    rest = None if request is None else request - parts
    return {"client": round(client_mean_ms, 4),
            "outside_server": round(client_mean_ms - inside, 4),
            "server_other": None if rest is None else round(rest, 4),
            "queue": queue, "model_io": model_io, "model": model,
            "server_whole": "published" if request is not None else "sum of the parts"}
