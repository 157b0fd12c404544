"""How figures are written, in the terminal tables, the verdict lines and the reports: one
place, so the same figure reads the same everywhere. An absent figure (None) is DASH."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DASH = "-"


def number(value: Any, digits: int = 3) -> str:
    """Any result field, as a report cell: integers with thousands separators, floats to
    `digits` significant digits (whole from 1,000 up), booleans yes/no."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def fixed(value: float | None, places: int = 2, unit: str = "") -> str:
    """`places` decimals, then `unit` if given (" ms"): 12.35, 12.35 ms."""
    return DASH if value is None else f"{value:.{places}f}{unit}"


def percent(value: float | None) -> str:
    """A ratio as a whole percentage: 0.734 -> 73%."""
    return DASH if value is None else f"{value:.0%}"


def times(value: float | None) -> str:
    """A ratio as a factor: 1.5 -> 1.50x."""
    return DASH if value is None else f"{value:.2f}x"


def req_per_s(value: float) -> str:
    """A request rate in prose: 1,234 req/s from 100 up, 12.3 req/s below."""
    return f"{value:,.0f} req/s" if value >= 100 else f"{value:,.1f} req/s"


def ms(value: float | None) -> str:
    """A latency in prose: 3 significant digits under 10 ms (0.532 ms), one decimal above."""
    if value is None:
        return DASH
    return f"{value:.3g} ms" if value < 10 else f"{value:,.1f} ms"


def ms_compact(value: float | None) -> str:
    """Milliseconds for a narrow column, no unit: 2 decimals under 100, whole above."""
    return DASH if value is None else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def us_compact(value_ms: float | None) -> str:
    """A latency given in ms, written in µs for a narrow column, no unit: 1 decimal under
    100 µs, whole above."""
    if value_ms is None:
        return DASH
    value = value_ms * 1000
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def mib(size_bytes: int | None) -> str:
    return DASH if size_bytes is None else f"{size_bytes / (1 << 20):.1f}"


def kib(size_bytes: int | None) -> str:
    return DASH if size_bytes is None else f"{size_bytes / 1024:.1f}"


def span(values: Iterable[float], spec: str) -> str:
    """One figure, or min-max where the values differ once formatted with `spec`."""
    values = list(values)
    if not values:
        return DASH
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low}-{high}"


def configuration_text(values: Mapping[str, Any], separator: str = " ") -> str:
    """A server's knob values in a profile's own words: "batching=on max_batch_size=4"."""
    return separator.join(
        f"{name}={'on' if value is True else 'off' if value is False else value}"
        for name, value in values.items()) or "no knobs"
