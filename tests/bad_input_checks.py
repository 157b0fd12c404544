"""The bad-input matrix and the fuzzer against a real server, as assertions: used by the test
file that owns each server's fixture (and by the Docker tests, against the containers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploybench.manifest import load_manifest
from deploybench.serving import bad_inputs, targets
from tests.fuzz_bodies import fuzz

FUZZ_EXAMPLES = 40  # per protocol in `make test`; tests/fuzz_decoders.py runs many more


def assert_matrix(target: str, endpoints: Any, root: Path, model: str = "digits-mlp"
                  ) -> list[bad_inputs.Probe]:
    """Every case refused naming the problem in every protocol of `target` (or as its
    declaration says, and then exactly as declared), then a good request answered correctly."""
    probes = bad_inputs.probe_target(target, endpoints, root, model)
    header, rows = bad_inputs.table(probes)
    table = "\n".join(" | ".join(row) for row in [header, *rows])
    for probe in probes:
        failed = [(o.case, o.status, o.why, o.message) for o in probe.outcomes
                  if not o.ok and o.verdict != bad_inputs.KNOWN_CRASH]
        assert not failed, f"{target} {probe.protocol}: {failed}\n{table}"
        # a known crash is exactly what the registry declares (tests prove each one is real)
        crashed = {o.case for o in probe.outcomes if o.verdict == bad_inputs.KNOWN_CRASH}
        declared_crashes = {case for case, _ in
                            targets.get(target).protocol(probe.protocol).crashes}
        assert crashed == declared_crashes & {o.case for o in probe.outcomes}, probe.protocol
        assert probe.good_answer == "correct", (probe.protocol, probe.good_answer)
        # only what is declared, and the declared NaN is real (a stale one would hide a fix)
        declared = {case for case, _ in targets.get(target).protocol(probe.protocol).by_design}
        seen = {o.case for o in probe.outcomes if o.verdict == "by design"}
        assert seen <= declared, (probe.protocol, seen, declared)
        assert ("non-finite value" in seen) == ("non-finite value" in declared), probe.protocol
        closes = bool(targets.get(target).closes_after_error)
        assert probe.connection_kept != closes, (probe.protocol, probe.connection_kept)
    return probes


def assert_fuzz(target: str, endpoints: Any, root: Path, model: str = "digits-mlp",
                examples: int = FUZZ_EXAMPLES) -> None:
    """The fuzzer's property over `examples` generated bodies per protocol (and the
    regressions): a refusal or a correct-looking answer, never a 5xx, a drop or a hang."""
    manifest = load_manifest(root, model)
    for protocol in targets.get(target).protocol_names:
        tried, failures = fuzz(target, protocol, endpoints.address(target, protocol), model,
                               manifest.signature(), manifest.outputs[0].name, examples)
        assert tried >= examples and not failures, (protocol, failures)
