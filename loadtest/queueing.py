"""The ideal server under a p99 bound: what the framework alone could sustain with Poisson
arrivals, so that a server's rate under the bound is compared with a rate under the same bound.

The in-process ceiling is a throughput with the model kept busy; under a p99 bound no server
gets near it, because Poisson arrivals queue up behind each other (at 80 % of capacity a
request that takes 25 ms waits about 50 ms on average). The ideal server here has no overhead
at all: one worker, first come first served, every inference taking exactly the in-process
time for its batch, and (with batching) every batch taking whatever has arrived, up to the
bound, without waiting. It is an upper bound: real service times vary, which only adds to the
tail. A batch that costs more per row than batch 1 makes such a greedy batcher worse, so the
bench holds a batching server to the better of batching and not. Simulated with a fixed seed,
so the same ceilings give the same figure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

REQUESTS = 10_000  # simulated arrivals per rate: a p99 over 9,500 of them
WARMUP = 500  # the first ones, while the queue fills, are not counted


def batch_service_ms(latency_ms: dict[int, float]) -> Callable[[int], float]:
    """Milliseconds for a batch of k, linear between the measured batch sizes (each k worked
    out once: the simulation asks for it on every batch)."""
    sizes = sorted(latency_ms)
    return functools.cache(lambda k: float(np.interp(k, sizes, [latency_ms[s] for s in sizes])))


def p99_response_ms(rate_rps: float, service_ms: Callable[[int], float], max_batch: int,
                    seed: int = 0) -> float:
    """p99 of arrival-to-answer time for Poisson arrivals at `rate_rps` (ms)."""
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1000 / rate_rps, REQUESTS))
    responses = np.empty(REQUESTS)
    free_at, first = 0.0, 0
    while first < REQUESTS:
        start = max(free_at, arrivals[first])
        # the batch: everything that has arrived by the time the worker is free, up to the bound
        last = min(int(np.searchsorted(arrivals, start, side="right")), first + max_batch)
        last = max(last, first + 1)
        free_at = start + service_ms(last - first)
        responses[first:last] = free_at - arrivals[first:last]
        first = last
    return float(np.percentile(responses[WARMUP:], 99))


def ideal_rate_rps(latency_ms: dict[int, float], bound_ms: float, max_batch: int = 1,
                   precision: float = 0.01) -> float | None:
    """The highest Poisson rate whose simulated p99 stays within `bound_ms` (None when even a
    lone request takes longer than the bound)."""
    service = batch_service_ms(latency_ms)
    if service(1) > bound_ms:
        return None
    capacity = max(k * 1000 / service(k) for k in range(1, max_batch + 1))
    low, high = 0.0, capacity
    while high - low > precision * capacity:
        middle = (low + high) / 2
        if p99_response_ms(middle, service, max_batch) <= bound_ms:
            low = middle
        else:
            high = middle
    return round(low, 1)
