"""Distribution-free confidence intervals for latency percentiles, from order statistics.

Of n independent latencies, the number B that fall below the true q-quantile is
Binomial(n, q). So the k-th smallest latency X(k) lies at or above the quantile exactly when
B < k, whatever the latencies' distribution. The 95% interval is [X(l), X(u)] with
l = B's 2.5% quantile and u = its 97.5% quantile + 1 (ranks from 1): it covers the true quantile
with probability P(l <= B < u) >= 95% (equal tails, the binomial's discreteness makes it a
little more). A bound whose rank falls outside 1..n is undetermined (None): too few requests
for that percentile (a p99 from 300 requests has no upper bound: its 97.5% rank is 301).

X(k) is read from the step's exact HDR histogram (3 significant digits: each value within
0.1 %). Kept out of loadtest/histogram.py, which the locust process imports: scipy is not light.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram
from scipy.stats import binom

from deploybench.loadtest.histogram import PERCENTILES

CONFIDENCE = 0.95


def rank_bounds(n: int, quantile: float, confidence: float = CONFIDENCE,
                ) -> tuple[int | None, int | None]:
    """The ranks (1..n) of the interval's lower and upper order statistics; None where n
    requests cannot bound the quantile on that side."""
    if n <= 0:
        return None, None
    tail = (1.0 - confidence) / 2.0
    low = int(binom.ppf(tail, n, quantile))
    high = int(binom.ppf(1.0 - tail, n, quantile)) + 1
    return (low if low >= 1 else None), (high if high <= n else None)


def value_at_rank(histogram: HdrHistogram, rank: int) -> float:
    """The rank-th smallest recorded value (ranks from 1), in the histogram's unit."""
    return histogram.get_value_at_percentile(100.0 * rank / histogram.get_total_count())


def percentile_intervals(histogram: HdrHistogram, confidence: float = CONFIDENCE,
                         ) -> dict[str, list[float | None]]:
    """For every reported percentile (p50 ... p99.9): [low, high] in milliseconds, a bound None
    where the step has too few requests to give it."""
    n = histogram.get_total_count()
    intervals: dict[str, list[float | None]] = {}
    for key, percentile in PERCENTILES.items():
        low, high = rank_bounds(n, percentile / 100.0, confidence)
        intervals[key] = [None if rank is None else round(value_at_rank(histogram, rank) / 1000, 3)
                          for rank in (low, high)]
    return intervals
