"""Exact latencies: every request's latency in an HDR histogram, microsecond resolution.

Locust buckets its own response times to about two significant digits, which is too coarse for
p99/p99.9; an HDR histogram with 3 significant digits keeps every value within 0.1 %. Histograms
travel between processes (locust worker -> master -> deploybench) in HdrHistogram's standard
base64 encoding, and add up exactly.

Light on purpose: imported inside the locust process (no TensorFlow, no torch).
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: anything slower is clamped, never dropped
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99_9": 99.9}


def new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_ms(histogram: HdrHistogram, milliseconds: float) -> None:
    """Record one latency given in milliseconds (float), at microsecond resolution."""
    micros = int(round(milliseconds * 1000.0))
    histogram.record_value(min(max(micros, LOWEST_US), HIGHEST_US))


def encode(histogram: HdrHistogram) -> str:
    return histogram.encode().decode("ascii")


def decode(text: str | None) -> HdrHistogram:
    """A histogram from its encoding; an empty one from None or ''."""
    histogram = new()
    if text:
        histogram.decode_and_add(text.encode("ascii"))
    return histogram


def merge(texts: list[str | None]) -> HdrHistogram:
    total = new()
    for text in texts:
        if text:
            total.decode_and_add(text.encode("ascii"))
    return total


def latency_ms(histogram: HdrHistogram) -> dict[str, float | None]:
    """p50, p90, p95, p99, p99.9 (plus mean, min and max) in milliseconds; None when empty."""
    if histogram.get_total_count() == 0:
        return {**dict.fromkeys(PERCENTILES), "mean": None, "min": None, "max": None}
    values = histogram.get_percentile_to_value_dict(list(PERCENTILES.values()))
    figures: dict[str, float | None] = {
        key: round(values[percentile] / 1000.0, 3) for key, percentile in PERCENTILES.items()
    }
    figures["mean"] = round(histogram.get_mean_value() / 1000.0, 3)
    figures["min"] = round(histogram.get_min_value() / 1000.0, 3)
    figures["max"] = round(histogram.get_max_value() / 1000.0, 3)
    return figures
