"""Distribution-free confidence intervals for percentiles, from order statistics.

Of n independent values, the number B that fall below the true q-quantile is Binomial(n, q).
So the k-th smallest value X(k) lies at or above the quantile exactly when B < k, whatever the
values' distribution. The 95% interval is [X(l), X(u)] with l = B's 2.5% quantile and u = its
97.5% quantile + 1 (ranks from 1): it covers the true quantile with probability
P(l <= B < u) >= 95% (equal tails, the binomial's discreteness makes it a little more). A bound
whose rank falls outside 1..n is undetermined (None): too few values for that percentile (a p99
from 300 requests has no upper bound: its 97.5% rank is 301).

Standard library only (the binomial's quantiles summed in log space): the locust process
decides early stopping with it, and imports nothing heavy. The load stage reads the ranks from
its HDR histograms (loadtest/intervals.py), the edge stage from its sorted timings.
"""

from __future__ import annotations

import math

CONFIDENCE = 0.95
_SPREAD = 12.0  # standard deviations around the mean beyond which the binomial's mass is < 1e-30


def binomial_quantiles(n: int, p: float, probabilities: tuple[float, ...]) -> list[int]:
    """For each probability a, the smallest k with P(Binomial(n, p) <= k) >= a (what
    scipy.stats.binom.ppf gives), summing the probability mass in log space over the ranks
    where it is not negligible."""
    sd = math.sqrt(n * p * (1.0 - p))
    first = max(0, math.floor(n * p - _SPREAD * sd - 10))
    last = min(n, math.ceil(n * p + _SPREAD * sd + 10))
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    wanted = sorted((a, i) for i, a in enumerate(probabilities))
    found: list[int] = [last] * len(probabilities)
    cumulative, index = 0.0, 0
    for k in range(first, last + 1):
        cumulative += math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                               + k * log_p + (n - k) * log_q)
        while index < len(wanted) and cumulative >= wanted[index][0] * (1 - 1e-12):
            found[wanted[index][1]] = k
            index += 1
        if index == len(wanted):
            break
    return found


def rank_bounds(n: int, quantile: float, confidence: float = CONFIDENCE,
                ) -> tuple[int | None, int | None]:
    """The ranks (1..n) of the interval's lower and upper order statistics; None where n
    requests cannot bound the quantile on that side."""
    if n <= 0:
        return None, None
    tail = (1.0 - confidence) / 2.0
    low, high = binomial_quantiles(n, quantile, (tail, 1.0 - tail))
    high += 1
    return (low if low >= 1 else None), (high if high <= n else None)



def sorted_interval(ordered: list[float], quantile: float, confidence: float = CONFIDENCE,
                    ) -> list[float | None]:
    """[low, high] for the `quantile` (0.5 for the median) of values already sorted."""
    ranks = rank_bounds(len(ordered), quantile, confidence)
    return [None if rank is None else ordered[rank - 1] for rank in ranks]


LENGTH_BUCKETS = 4  # equal-width length buckets over 1..the model's longest sequence


def length_buckets(longest: int, count: int = LENGTH_BUCKETS) -> list[tuple[int, int]]:
    """[low, high] sequence-length buckets of equal width covering 1..longest."""
    width = max(1, math.ceil(longest / count))
    return [(low, min(low + width - 1, longest)) for low in range(1, longest + 1, width)]


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated linearly (numpy's default method)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def by_length(lengths: list[int], latencies_ms: list[float], longest: int,
              ) -> list[dict[str, object]]:
    """Latency against sequence length: p50 and p99 (with their 95% intervals) of the
    samples in each length bucket that has any."""
    rows: list[dict[str, object]] = []
    for low, high in length_buckets(longest):
        values = sorted(round(float(v), 5) for n, v in zip(lengths, latencies_ms, strict=True)
                        if low <= n <= high)
        if values:
            rows.append({"low": low, "high": high, "samples": len(values),
                         "p50": round(quantile(values, 0.5), 5),
                         "p99": round(quantile(values, 0.99), 5),
                         "p50_ci95": sorted_interval(values, 0.5),
                         "p99_ci95": sorted_interval(values, 0.99)})
    return rows
