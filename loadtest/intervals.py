"""Distribution-free confidence intervals for latency percentiles, from order statistics.

Of n independent latencies, the number B that fall below the true q-quantile is
Binomial(n, q). So the k-th smallest latency X(k) lies at or above the quantile exactly when
B < k, whatever the latencies' distribution. The 95% interval is [X(l), X(u)] with
l = B's 2.5% quantile and u = its 97.5% quantile + 1 (ranks from 1): it covers the true quantile
with probability P(l <= B < u) >= 95% (equal tails, the binomial's discreteness makes it a
little more). A bound whose rank falls outside 1..n is undetermined (None): too few requests
for that percentile (a p99 from 300 requests has no upper bound: its 97.5% rank is 301).

X(k) is read from the step's exact HDR histogram (3 significant digits: each value within
0.1 %). Standard library only (the binomial's quantiles summed in log space): the locust
process decides early stopping with it (loadtest/locustfile.py), and imports nothing heavy.
"""

from __future__ import annotations

import math

from hdrh.histogram import HdrHistogram

from deploybench.loadtest.histogram import PERCENTILES

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
