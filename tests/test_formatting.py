"""deploybench.formatting: each figure written one way, the texts the tables and reports show."""

from __future__ import annotations

from deploybench import formatting as fmt


def test_report_cells() -> None:
    assert [fmt.number(v) for v in (None, True, False, 1234567, 0.0, 0.012345, 12.345, 12345.6,
                                    "text")] == [
        "-", "yes", "no", "1,234,567", "0", "0.0123", "12.3", "12,346", "text"]
    assert fmt.number(0.012345, 2) == "0.012"


def test_prose_rates_and_latencies() -> None:
    assert (fmt.req_per_s(1234.5), fmt.req_per_s(12.34)) == ("1,234 req/s", "12.3 req/s")
    assert [fmt.ms(v) for v in (None, 0.53217, 9.876, 10.0, 1234.56)] == [
        "-", "0.532 ms", "9.88 ms", "10.0 ms", "1,234.6 ms"]


def test_fixed_percent_and_factor() -> None:
    assert (fmt.fixed(None), fmt.fixed(3.14159), fmt.fixed(3.14159, 1, " ms")) == (
        "-", "3.14", "3.1 ms")
    assert (fmt.percent(0.734), fmt.percent(None), fmt.times(1.5)) == ("73%", "-", "1.50x")


def test_compact_columns_and_sizes() -> None:
    assert [fmt.ms_compact(v) for v in (None, 0.5, 99.994, 123.4)] == ["-", "0.50", "99.99", "123"]
    assert [fmt.us_compact(v) for v in (None, 0.0123, 0.5)] == ["-", "12.3", "500"]
    assert (fmt.mib(3 << 20), fmt.kib(1536), fmt.kib(None)) == ("3.0", "1.5", "-")


def test_span_is_one_figure_or_a_range() -> None:
    assert fmt.span([], ".4f") == "-"
    assert fmt.span([0.97221, 0.97224], ".4f") == "0.9722"
    assert fmt.span([1e-6, 3e-5], ".1e") == "1.0e-06-3.0e-05"
