"""What a report says of `deploybench tune`: per server, its outcome and every probe, each
marked if it is on the Pareto front of rate under the bound against p99 (no other probe of
that server has both a higher rate and a lower p99)."""

from __future__ import annotations

from typing import Any

from deploybench.verdict import rows


def on_front(probe: dict[str, Any], others: list[dict[str, Any]]) -> bool:
    rate, p99 = probe.get("max_rate_rps"), probe.get("p99_ms")
    if rate is None or p99 is None:
        return False
    return not any(o is not probe and o.get("max_rate_rps") is not None
                   and o.get("p99_ms") is not None
                   and o["max_rate_rps"] >= rate and o["p99_ms"] <= p99
                   and (o["max_rate_rps"], o["p99_ms"]) != (rate, p99) for o in others)


def sections(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per tuned server: its tune row and its probes (each with `pareto`), in the
    order the servers were tuned."""
    probes = rows(results, "tune-probe")
    found = []
    for outcome in rows(results, "tune"):
        mine = sorted((p for p in probes if (p["target"], p["protocol"], p["model"])
                       == (outcome["target"], outcome["protocol"], outcome["model"])),
                      key=lambda p: p["probe"])
        found.append({"outcome": outcome,
                      "probes": [p | {"pareto": on_front(p, mine)} for p in mine]})
    return found
