"""The typed records of results.json: one pydantic model per measurement kind, and the file.

Every field a producer writes is declared here with its type; a misspelt or unknown field is
an error (extra="forbid"), and so is a value of the wrong type (strict mode: no "3" for 3).
The records are versioned together by SCHEMA: change a field, bump it.

A record keeps only the fields its producer set (dumped with exclude_unset), so an open-loop
step carries `scheduled_rps` and a closed-loop one does not, as before typed records. Readers
(verdict, plots, report) work on the plain dicts of a validated file (ResultsFile.dump()).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter
from pydantic_core import PydanticCustomError

SCHEMA = "deploybench.results/3"


def _number(value: Any) -> int | float:
    # int stays int and float stays float (a plain `float` field would turn 2 users into 2.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("float_type", "Input should be a valid number")
    return value


Number = Annotated[int | float, PlainValidator(_number)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Record(_Strict):
    def model_post_init(self, context: Any) -> None:
        # `kind` (and a fault's `fault`) are discriminators: always written, even when they
        # came from the class's default rather than the producer
        self.model_fields_set.add("kind")
        if "fault" in type(self).model_fields:
            self.model_fields_set.add("fault")


# -- nested figures --------------------------------------------------------------------------------

class Latency(_Strict):
    """Milliseconds; load steps carry all of them (exact, HDR), edge rows p50/p90/p99/mean/min/
    max. None where nothing was timed."""

    p50: Number | None = None
    p90: Number | None = None
    p95: Number | None = None
    p99: Number | None = None
    p99_9: Number | None = None
    mean: Number | None = None
    min: Number | None = None
    max: Number | None = None


class LengthBucket(_Strict):
    """Latency of the samples whose sequence length (a text model's tokens) lies in
    [low, high]: latency against length, p50 and p99 with their 95% intervals."""

    low: int
    high: int
    samples: int
    p50: Number
    p99: Number
    p50_ci95: list[Number | None] | None = None
    p99_ci95: list[Number | None] | None = None


class Stability(_Strict):
    stable: bool
    window_rps: list[Number]
    window_mean_ms: list[Number | None]


class LocustFigures(_Strict):
    """Locust's own (rounded) figures, kept as a cross-check."""

    requests: int
    failures: int
    p50_ms: Number | None = None
    p99_ms: Number | None = None
    p99_9_ms: Number | None = None


class CpuWindow(_Strict):
    """Where the CPU went during a step's window (loadtest/cpu.py)."""

    cores: int | None = None
    machine_percent: Number
    server_percent: Number | None = None
    locust_percent: Number | None = None
    other_percent: Number | None = None
    server_cpu_seconds: Number | None = None
    server_peak_rss_bytes: int | None = None
    server_usage_from: str | None = None  # process tree (native) or container stats (Docker)


class ServerTime(_Strict):
    """One time a server published for a step (loadtest/server_metrics.py), in ms: a mean,
    and from a histogram p50/p99 with the bounds of the bucket each lies in."""

    metric: str
    source: str  # "histogram" | "counter (mean only)"
    count: Number  # requests (or batches) the server counted in the window
    mean: Number | None = None
    p50: Number | None = None
    p99: Number | None = None
    p50_bucket: list[Number | None] | None = None
    p99_bucket: list[Number | None] | None = None


class Breakdown(_Strict):
    """The client's mean latency split (ms): outside the server (network, front end, client),
    the server's own time besides queue and model, the queue, the model."""

    client: Number
    outside_server: Number
    server_other: Number | None = None
    queue: Number | None = None
    model_io: Number | None = None  # the model's tensors in and out, where timed apart
    model: Number | None = None
    server_whole: str  # "published", or "sum of the parts" where no whole time is


class StepServerMetrics(_Strict):
    """What the server's own metrics said about a step, and what they did not."""

    available: bool
    url: str | None = None
    missing: list[str]
    request_ms: ServerTime | None = None
    queue_ms: ServerTime | None = None
    model_input_ms: ServerTime | None = None
    model_ms: ServerTime | None = None
    model_output_ms: ServerTime | None = None
    batch_sizes: dict[str, Number] | None = None
    batch_counts: str | None = None  # what a batch size counts: rows or requests
    breakdown_ms: Breakdown | None = None


class WorkerFigures(_Strict):
    """One locust worker's own share of a distributed step, beside the master's merge."""

    worker: str
    requests: int
    failures: int
    p99_ms: Number | None = None


class TriedRate(_Strict):
    rps: Number
    passed: bool
    inconclusive: bool | None = None  # early stopping: neither passed nor failed in time


class EarlyStop(_Strict):
    """How an early-stopped open-loop step ended (loadtest/locustfile.py)."""

    decision: Literal["pass", "fail", "inconclusive"]
    requests: int
    seconds: Number
    p99_interval_ms: list[Number | None]
    bound_ms: Number
    min_pass_requests: int
    min_pass_seconds: Number | None = None


# -- records ---------------------------------------------------------------------------------------

class ExportRecord(_Record):
    """One artifact of one model and how it did on parity (the manifest's artifact fields)."""

    kind: Literal["export"] = "export"
    model: str
    tolerance: Number
    reference_accuracy: Number | None = None
    min_top1_agreement: Number | None = None
    format: str
    path: str
    status: str  # ok | failed | parity-failed
    quantized: bool
    # the twin it was converted from, the runtime that runs it, its precision (the manifest's)
    framework: str | None = None
    runtime: str | None = None
    precision: str | None = None
    bytes: int | None = None
    export_seconds: Number | None = None
    max_abs_diff: Number | None = None
    accuracy: Number | None = None
    accuracy_drop: Number | None = None
    top1_agreement: Number | None = None
    reason: str | None = None
    delegated_share: Number | None = None
    non_delegated_ops: list[str] | None = None
    # the model's, not the artifact's: where it came from (zoo | user), the frameworks it has
    # a side in, and whether its samples were seeded random inputs (accuracy means nothing)
    model_source: str | None = None
    model_frameworks: list[str] | None = None
    random_inputs: bool | None = None


class _ServerRow(_Record):
    """A record about one server target (and protocol): its name, and the registry's words
    for it (serving/targets.py `Target.describe`), so a report names it without the registry."""

    kind: str  # each subclass narrows it; declared first, so it leads in results.json
    target: str
    target_label: str | None = None
    framework: str | None = None
    software: str | None = None  # the server software (KServe runs one target per framework)
    protocol: str | None = None
    protocol_label: str | None = None


class ServerRecord(_ServerRow):
    """One server of a deployment: up, or why not."""

    kind: Literal["server"] = "server"
    status: str  # up | unavailable | failed | stopped
    reason: str | None = None
    mode: str | None = None  # `deploybench run`
    batching: bool | None = None  # `deploybench bench`
    configuration: dict[str, int | bool] | None = None  # its knob values as it ran


class _Step(_ServerRow):
    """One locust step (loadtest/measurement.py build, then the runner's additions)."""

    kind: Literal["load", "loadgen-capacity"]
    protocol: str
    model: str
    scenario: str
    level: Number  # users (closed loop) or requests/s (open loop)
    level_unit: str
    endpoint: str
    batch_size: int
    users: int
    warmup_s: Number
    locust_files: dict[str, str]
    status: Literal["ok", "failed"]
    reason: str | None = None
    server_gone: bool | None = None  # aborted: the server went away mid-step
    duration_s: Number | None = None
    requests: int | None = None
    failures: int | None = None
    wrong_answers: int | None = None
    nonfinite_answers: int | None = None  # wrong answers holding NaN or Infinity
    throughput_rps: Number | None = None  # goodput: correct answers per second
    latency_ms: Latency | None = None
    # each percentile's 95% distribution-free interval [low, high], a bound None where the
    # step has too few requests for it (loadtest/intervals.py)
    latency_ci95_ms: dict[str, list[Number | None]] | None = None
    # a text model's latency by sequence length (requests replaying the golden lengths)
    latency_by_length_ms: list[LengthBucket] | None = None
    errors: dict[str, int] | None = None
    loadgen_saturated: bool | None = None
    loadgen_cpu_percent: Number | None = None
    stability: Stability | None = None
    locust: LocustFigures | None = None
    heavy_modules_in_locust: list[str] | None = None
    repeat: int | None = None  # `load --repeat N`: which repeat (1..N) this step belongs to
    # distributed locust: each worker's own figures (the step's are the master's exact merge)
    loadgen_workers: list[WorkerFigures] | None = None
    # False: a model the kit did not export (`load --no-check`): answers counted, not checked
    answers_checked: bool | None = None
    # open loop only
    target_rps: Number | None = None
    scheduled_rps: Number | None = None
    completed_rps: Number | None = None
    service_latency_ms: Latency | None = None
    early_stop: EarlyStop | None = None
    in_flight_at_end: int | None = None
    in_flight_limit_hits: int | None = None
    # the runner's: CPU in the window and the cost figures
    cpu: CpuWindow | None = None
    server_metrics: StepServerMetrics | None = None  # the server's own view of the step
    server_cpu_s_per_1k: Number | None = None
    server_peak_rss_bytes: int | None = None
    # the runner's: a step whose figures may be the machine's, not the server's (why, if so)
    noisy: bool | None = None
    noise: list[str] | None = None
    # the runner's, open loop: the step's verdict against the p99 bound
    passed: bool | None = None
    verdict: str | None = None
    rate_bound_ms: Number | None = None


class LoadRecord(_Step):
    kind: Literal["load"] = "load"


class LoadgenCapacityRecord(_Step):
    """A step of the load-generator capacity check (deploybench/jobs/loadgen.py)."""

    kind: Literal["loadgen-capacity"] = "loadgen-capacity"
    note: str | None = None


class LoadSloRecord(_ServerRow):
    """An open-loop scenario's outcome: the highest rate whose p99 met the bound."""

    kind: Literal["load-slo"] = "load-slo"
    protocol: str
    model: str
    scenario: str
    rate_bound_ms: Number
    max_rate_rps: Number | None = None
    tried: list[TriedRate]
    stopped_by: str
    p99_ms_at_max: Number | None = None
    loadgen_saturated: bool


class _EdgeRow(_Record):
    """One edge or in-process measurement; every row has every field (edge/bench.py FIELDS
    follows this order), blanks where a failed row has no figure."""

    kind: Literal["edge", "inprocess"]  # each subclass narrows it; declared first
    model: str
    variant: str | None = None
    runtime: str | None = None
    # the twin the artifact was converted from (tensorflow | pytorch) and its precision, from
    # the manifest: the framework x runtime matrix
    framework: str | None = None
    precision: str | None = None
    threads: int | None = None
    xnnpack: bool | None = None
    batch: int
    status: str  # ok | failed | not-edge-ready
    error: str | None = None
    path: str | None = None
    size_bytes: int | None = None
    edge_ready: bool | None = None
    verdict: str | None = None
    ops: list[str] | None = None
    op_counts: dict[str, int] | None = None
    non_builtin_ops: list[str] | None = None
    runs: int | None = None
    warmup: int | None = None
    # which fresh process of `--repeats` took this row (1..N): the spread of a measurement
    # across processes is the run-to-run noise, which one process's intervals do not show
    repeat: int | None = None
    import_ms: Number | None = None
    import_memory_bytes: int | None = None
    init_ms: Number | None = None
    first_ms: Number | None = None
    latency_ms: Latency | None = None
    # p50, p90 and p99's 95% distribution-free intervals [low, high] (edge/measure.py)
    latency_ci95_ms: dict[str, list[Number | None]] | None = None
    # a text model's latency by sequence length (None for fixed-shape inputs)
    latency_by_length_ms: list[LengthBucket] | None = None
    peak_memory_growth_bytes: int | None = None
    retained_memory_growth_bytes: int | None = None
    memory_method: str | None = None
    samples: int | None = None
    accuracy: Number | None = None
    reference_accuracy: Number | None = None
    accuracy_drop: Number | None = None
    top1_agreement: Number | None = None
    max_abs_diff: Number | None = None
    finite_outputs: bool | None = None
    runtime_threads: dict[str, int | None] | None = None
    delegate_partitions: int | None = None
    # the share of operators XNNPACK runs, and those left to the runtime's own kernels: an
    # ExecuTorch program's from the manifest (its lowering), a .tflite's from the interpreter
    # with XNNPACK on (edge/bench.py)
    delegated_share: Number | None = None
    non_delegated_ops: list[str] | None = None


class EdgeRecord(_EdgeRow):
    kind: Literal["edge"] = "edge"


class InProcessRecord(_EdgeRow):
    kind: Literal["inprocess"] = "inprocess"


class _Fault(_Record):
    """What a fault hit, given by its caller (the load step, the failed requests, ...)."""

    kind: Literal["fault"] = "fault"
    target: str
    model: str
    scenario: str | None = None
    level: Number | None = None
    during: str | None = None
    failed_requests: int | None = None


class WorkerKillRecord(_Fault):
    """A killed TorchServe worker and how long until answers were right again."""

    fault: Literal["torchserve-worker-kill"] = "torchserve-worker-kill"
    signal: str
    killed_pid: int
    killed_at: Number  # wall clock, seconds since the epoch
    recovery_s: Number | None = None
    new_pid: int | None = None
    new_worker_spawned_s: Number | None = None
    probes: int
    probe_errors: dict[str, int]
    status: str  # recovered | not-recovered
    reason: str


class RolloverRecord(_Fault):
    """A model version rolled over on a live TorchServe."""

    fault: Literal["torchserve-version-rollover"] = "torchserve-version-rollover"
    old_version: str
    new_version: str
    mar: str
    started_at: Number
    registered_s: Number | None = None
    default_s: Number | None = None
    finished_at: Number | None = None
    steps: list[str]


class ContainerCrashRecord(_Fault):
    """A server's container whose processes were killed, as a crash kills them, and how long
    until its restart policy had it answering right again."""

    fault: Literal["container-crash"] = "container-crash"
    service: str
    container: str
    killed_at: Number
    exit_code: int | None = None
    restarts: int  # the engine's RestartCount after recovery, less before the kill
    recovery_s: Number | None = None
    probes: int
    probe_errors: dict[str, int]
    status: str  # recovered | not-recovered
    reason: str


FaultRecord = Annotated[WorkerKillRecord | RolloverRecord | ContainerCrashRecord,
                        Field(discriminator="fault")]


class BenchCeilingRecord(_Record):
    """One in-process throughput figure of `deploybench bench` (loadtest/ceiling.py)."""

    kind: Literal["bench-ceiling"] = "bench-ceiling"
    model: str
    framework: str
    format: str
    cpus: str
    runtime: str
    batch: int
    threads: int
    iterations: int
    seconds: Number
    inferences_per_s: Number
    batch_latency_ms: Number
    when: str  # before | after the servers


class BenchRecord(_ServerRow):
    """One server, protocol and batching setting of `deploybench bench`, against its ceiling
    (protocol None: the server was not available)."""

    kind: Literal["bench"] = "bench"
    model: str
    batching: bool | None = None
    max_rate_rps: Number | None = None
    bound_ms: Number | None = None
    ceiling_framework: str | None = None
    ceiling_batch: int | None = None
    ceiling_rps: Number | None = None
    ceiling_drift: Number | None = None
    efficiency: Number | None = None
    batching_gain: Number | None = None
    ideal_rate_rps: Number | None = None
    bound_efficiency: Number | None = None
    saturated_rps: Number | None = None
    saturated_users: Number | None = None
    saturated_p99_ms: Number | None = None
    saturated_efficiency: Number | None = None
    reason: str | None = None
    configuration: dict[str, int | bool] | None = None  # the server's knob values as it ran


class TuneProbeRecord(_ServerRow):
    """One configuration `deploybench tune` tried on one server. A screen: a closed loop of
    1, 2, 4, ... users, scored by the highest throughput of a step whose p99 met the bound. A
    confirm: the open-loop search's highest rate whose p99 met the bound with confidence
    (early stopping) and the rates that bracket it. Both with what the server spent; a
    configuration that would not start or died is a probe with its reason."""

    kind: Literal["tune-probe"] = "tune-probe"
    model: str
    protocol: str
    probe: int  # 1, 2, ... in the order tried on this server
    phase: Literal["screen", "confirm"]
    configuration: dict[str, int | bool]
    # unavailable: the server cannot run here at all (its search ends); failed: this
    # configuration did not start or died
    status: Literal["ok", "none-under-bound", "failed", "unavailable"]
    reason: str | None = None
    bound_ms: Number
    screen_rps: Number | None = None  # screen: the closed loop's best under the bound ...
    screen_users: int | None = None  # ... at these users
    max_rate_rps: Number | None = None  # confirm: the open loop's best under the bound
    failed_rate_rps: Number | None = None  # confirm: the lowest rate above it that failed
    p99_ms: Number | None = None  # at screen_rps or max_rate_rps
    p99_ci95_ms: list[Number | None] | None = None
    saturated_rps: Number | None = None  # screen: its busiest step, whatever the latency
    server_cpu_s_per_1k: Number | None = None  # at screen_rps or max_rate_rps
    seconds: Number


class TuneRecord(_ServerRow):
    """`deploybench tune`'s outcome for one server: its default configuration and the best
    one it found, each with its confirmed (open-loop) rate under the bound."""

    kind: Literal["tune"] = "tune"
    model: str
    protocol: str
    bound_ms: Number
    default_configuration: dict[str, int | bool]
    default_rate_rps: Number | None = None
    screened_configuration: dict[str, int | bool] | None = None  # the screen's pick
    # the better confirmed of the default and the screen's pick (the default unless the pick
    # beat it by the minimum gain)
    best_configuration: dict[str, int | bool] | None = None
    best_rate_rps: Number | None = None
    gain: Number | None = None  # best over default
    probes: int
    seconds: Number
    budget_s: Number
    stopped_by: str


class LoadgenCheckRecord(_ServerRow):
    """Whether one locust process could be the bottleneck of a server (the target fields:
    which one; `server`: where it ran) (deploybench/jobs/loadgen.py)."""

    kind: Literal["loadgen-check"] = "loadgen-check"
    target: str | None = None  # None: written by a check that named no target
    locust_capacity_rps: Number | None = None
    locust_capacity_users: Number | None = None
    server_peak_rps: Number | None = None
    server_peak_users: Number | None = None
    share: Number | None = None
    loadgen_saturated_on_server: bool
    could_be_bottleneck: bool
    locust_cpu_percent_at_peak: Number | None = None
    verdict: str
    threshold_share: Number
    server: str | None = None


class LoadSpreadRecord(_ServerRow):
    """One step measured in every repeat of `load --repeat N`: its spread across them
    (loadtest/measurement.py spreads)."""

    kind: Literal["load-spread"] = "load-spread"
    protocol: str
    model: str
    scenario: str
    level: Number
    level_unit: str
    repeats: int
    throughput_rps: list[Number]  # min, median, max
    p99_ms: list[Number] | None = None
    throughput_spread: Number | None = None  # (max - min) / median
    noisy: bool
    why: str


class _LoadgenRun(_Record):
    """A load generator's own run against one endpoint, closed loop: what the calibration and
    the cost benchmark share."""

    kind: Literal["loadgen-calibration", "loadgen-cost"]  # each subclass narrows it
    model: str
    endpoint: str
    connections: int
    status: Literal["ok", "failed"]
    reason: str | None = None
    requests: int | None = None
    failures: int | None = None
    throughput_rps: Number | None = None
    loadgen_cpu_percent: Number | None = None


class LoadgenCalibrationRecord(_LoadgenRun):
    """The load generator's own time per request, measured at the start of a load run against
    a trivial local endpoint, beside a raw socket's floor (loadtest/calibration.py)."""

    kind: Literal["loadgen-calibration"] = "loadgen-calibration"
    user_class: str
    client_latency_ms: Latency | None = None  # what the kit reports (p50, p90, p99)
    floor_latency_ms: Latency | None = None  # a blocking socket, same bytes, no checks
    overhead_p50_ms: Number | None = None  # client p50 - floor p50: the kit's own share


class LoadgenCostRecord(_LoadgenRun):
    """One load generator (the kit's, or wrk) against one endpoint in one round of the cost
    benchmark: one connection (deploybench/jobs/clientcost.py)."""

    kind: Literal["loadgen-cost"] = "loadgen-cost"
    round: int
    generator: Literal["wrk", "deploybench"]
    duration_s: Number | None = None
    latency_ms: Latency | None = None
    p50_vs_wrk: Number | None = None  # the kit's p50 over wrk's, same endpoint and round
    rps_vs_wrk: Number | None = None


class SloGateRecord(_Record):
    """One `--slo` gate decided on one load step, with the interval it was decided by
    (deploybench/slo.py)."""

    kind: Literal["slo-gate"] = "slo-gate"
    gate: str
    target: str
    protocol: str
    model: str
    level: Number
    level_unit: str
    decision: Literal["pass", "fail", "inconclusive"]
    observed: Number | None = None
    interval: list[Number | None] | None = None
    why: str


Record = Annotated[
    ExportRecord | ServerRecord | LoadRecord | LoadSloRecord | LoadgenCapacityRecord
    | EdgeRecord | InProcessRecord | FaultRecord | BenchCeilingRecord | BenchRecord
    | LoadgenCheckRecord | SloGateRecord | LoadSpreadRecord | LoadgenCalibrationRecord
    | LoadgenCostRecord | TuneProbeRecord | TuneRecord,
    Field(discriminator="kind"),
]
KINDS = ("export", "server", "load", "load-slo", "loadgen-capacity", "edge", "inprocess",
         "fault", "bench-ceiling", "bench", "loadgen-check", "slo-gate", "load-spread",
         "loadgen-calibration", "loadgen-cost", "tune-probe", "tune")

# what a stage is given to hand its records to the run's writer (deploybench/jobs/writer.py)
Sink = Callable[[Record], None]

_RECORD: TypeAdapter[Record] = TypeAdapter(Record)


def to_record(data: Mapping[str, Any]) -> Record:
    """The typed record of a producer's dict (its "kind" picks the class); raises pydantic's
    ValidationError on a misspelt field or a wrong type."""
    return _RECORD.validate_python(dict(data))


def record_dict(record: Record) -> dict[str, Any]:
    """A record as results.json holds it: only the fields its producer set."""
    return record.model_dump(exclude_unset=True)


class ResultsFile(_Strict):
    """The whole results.json of one run folder."""

    schema_id: Literal["deploybench.results/3"] = Field(alias="schema")  # SCHEMA
    created: str
    partial: bool
    notes: list[str]
    environment: dict[str, Any]
    measurements: list[Record]

    @classmethod
    def new(cls) -> ResultsFile:
        return cls(schema=SCHEMA, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                   partial=False, notes=[], environment={}, measurements=[])

    def dump(self) -> dict[str, Any]:
        """The file's JSON object (records with only the fields their producers set)."""
        return self.model_dump(by_alias=True, exclude_unset=True)
