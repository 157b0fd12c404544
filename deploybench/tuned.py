"""What a report says of `deploybench tune`: per server, its outcome and every probe. Each
probe gets `rate_rps` (a screen's closed-loop rate under the bound, a confirm's open-loop
one) and `at` (where: the screen's users, the confirm's lowest failing rate); a screen is
marked if it is on the Pareto front of its server's screens (no other screen has both a
higher rate and a lower p99). Confirms are not on it: an open loop's rate is another
measure than a closed loop's."""

from __future__ import annotations

from typing import Any

from deploybench.formatting import fixed
from deploybench.verdict import rows


def on_front(probe: dict[str, Any], others: list[dict[str, Any]]) -> bool:
    rate, p99 = probe.get("rate_rps"), probe.get("p99_ms")
    if rate is None or p99 is None or probe["phase"] != "screen":
        return False
    return not any(o is not probe and o["phase"] == "screen" and o.get("rate_rps") is not None
                   and o.get("p99_ms") is not None
                   and o["rate_rps"] >= rate and o["p99_ms"] <= p99
                   and (o["rate_rps"], o["p99_ms"]) != (rate, p99) for o in others)


def where(probe: dict[str, Any]) -> str:
    if probe.get("screen_users"):
        return f"closed loop, {probe['screen_users']} users"
    if probe.get("failed_rate_rps"):
        return f"open loop; {fixed(probe['failed_rate_rps'], 1)} req/s failed"
    return "open loop" if probe["phase"] == "confirm" else ""


def sections(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per tuned server: its tune row and its probes (each with `rate_rps`, `at`
    and `pareto`), in the order the servers were tuned."""
    probes = rows(results, "tune-probe")
    found = []
    for outcome in rows(results, "tune"):
        mine = [p | {"rate_rps": p.get("screen_rps") or p.get("max_rate_rps"), "at": where(p)}
                for p in sorted((p for p in probes if (p["target"], p["protocol"], p["model"])
                                 == (outcome["target"], outcome["protocol"], outcome["model"])),
                                key=lambda p: p["probe"])]
        found.append({"outcome": outcome,
                      "probes": [p | {"pareto": on_front(p, mine)} for p in mine]})
    return found
