"""Confidence intervals for the load stage's latency percentiles, read from each step's exact
HDR histogram (3 significant digits: each value within 0.1 %); the order statistics behind them
are deploybench/order_statistics.py's. Imports nothing heavy: the locust process decides early
stopping with it (loadtest/locustfile.py).
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

from deploybench.loadtest.histogram import PERCENTILES
from deploybench.order_statistics import CONFIDENCE, rank_bounds

__all__ = ["CONFIDENCE", "rank_bounds", "percentile_interval", "percentile_intervals",
           "decide_bound", "value_at_rank"]


def value_at_rank(histogram: HdrHistogram, rank: int) -> float:
    """The rank-th smallest recorded value (ranks from 1), in the histogram's unit."""
    return histogram.get_value_at_percentile(100.0 * rank / histogram.get_total_count())


def percentile_interval(histogram: HdrHistogram, percentile: float,
                        confidence: float = CONFIDENCE) -> list[float | None]:
    """[low, high] in milliseconds for one percentile (99.0 for the p99); a bound None where
    the histogram holds too few values to give it."""
    ranks = rank_bounds(histogram.get_total_count(), percentile / 100.0, confidence)
    return [None if rank is None else round(value_at_rank(histogram, rank) / 1000, 3)
            for rank in ranks]


def percentile_intervals(histogram: HdrHistogram, confidence: float = CONFIDENCE,
                         ) -> dict[str, list[float | None]]:
    """For every reported percentile (p50 ... p99.9): [low, high] in milliseconds."""
    return {key: percentile_interval(histogram, percentile, confidence)
            for key, percentile in PERCENTILES.items()}


def decide_bound(interval: list[float | None], bound_ms: float, requests: int,
                 min_pass_requests: int) -> str | None:
    """An upper bound on a percentile, decided by its interval: "pass" once the whole interval
    lies at or under it and at least `min_pass_requests` were measured, "fail" once the whole
    interval lies over it, None while undecided."""
    low, high = interval
    if high is not None and high <= bound_ms and requests >= min_pass_requests:
        return "pass"
    if low is not None and low > bound_ms:
        return "fail"
    return None
