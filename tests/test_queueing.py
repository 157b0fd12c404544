"""The ideal server under a p99 bound (loadtest/queueing.py): queueing theory's shape, checked."""

from __future__ import annotations

from pathlib import Path

from deploybench.loadtest.queueing import (
    batch_service_ms,
    ideal_rate_rps,
    p99_response_ms,
)


def test_service_time_is_linear_between_measured_batches():
    service = batch_service_ms({1: 25.0, 4: 70.0})
    assert [service(k) for k in (1, 2, 3, 4)] == [25.0, 40.0, 55.0, 70.0]
    assert batch_service_ms({1: 10.0})(3) == 10.0  # no batch measured beyond 1: clamped


def test_p99_grows_with_the_rate_and_never_undercuts_the_service_time():
    service = batch_service_ms({1: 25.0})
    tails = [p99_response_ms(rate, service, 1) for rate in (5, 20, 30, 38)]
    assert tails == sorted(tails) and tails[0] >= 25.0
    assert tails[-1] > 4 * tails[0]  # near capacity (40/s) the queue dominates
    # M/D/1 at 50% load: the mean wait is S*rho/(2(1-rho)) = 12.5 ms, so p99 is well above S
    assert 40 < p99_response_ms(20, service, 1) < 150


def test_ideal_rate_meets_the_bound_and_is_below_capacity():
    latency = {1: 25.0}
    rate = ideal_rate_rps(latency, bound_ms=100)
    assert 0 < rate < 40  # capacity: 1000 / 25 ms
    service = batch_service_ms(latency)
    assert p99_response_ms(rate, service, 1) <= 100
    assert p99_response_ms(rate * 1.1, service, 1) > 100  # the highest, within precision
    assert ideal_rate_rps(latency, bound_ms=1000) > rate  # a looser bound allows more
    assert ideal_rate_rps(latency, bound_ms=20) is None  # one request alone breaks it


def test_batching_helps_when_batches_are_cheaper_per_row_and_hurts_when_dearer():
    alone = ideal_rate_rps({1: 25.0}, bound_ms=100)
    cheaper = ideal_rate_rps({1: 25.0, 4: 60.0}, bound_ms=100, max_batch=4)
    dearer = ideal_rate_rps({1: 25.0, 4: 110.0}, bound_ms=100, max_batch=4)
    assert cheaper > alone * 1.3
    assert dearer < alone  # a greedy batch of 4 alone takes 110 ms: over the bound


def test_bench_holds_a_batching_server_to_the_better_of_batching_and_not():
    from deploybench.jobs.bench import BenchOptions, ideal_server_rps

    options = BenchOptions(model="m", artifacts=Path("a"), out=Path("o"), max_batch_size=4,
                           bound_ms=100)
    alone = ideal_rate_rps({1: 25.0}, bound_ms=100)
    cheap = {("torch", 1): 40.0, ("torch", 4): 4000 / 60}  # inferences/s
    dear = {("torch", 1): 40.0, ("torch", 4): 4000 / 110}
    assert ideal_server_rps(cheap, "torch", False, options) == alone
    assert ideal_server_rps(cheap, "torch", True, options) == ideal_rate_rps(
        {1: 25.0, 4: 60.0}, bound_ms=100, max_batch=4)
    assert ideal_server_rps(dear, "torch", True, options) == alone
    assert ideal_server_rps({}, "torch", True, options) is None
