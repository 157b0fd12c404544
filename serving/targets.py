"""The server targets: every server the kit can measure, declared once.

A target says what it is (name, display name, the framework it runs, the artifact format it
serves), where it listens (its endpoints, with loopback defaults), how each of its protocols is
spoken (client class, request body, locust user), how it starts natively and in compose, and
where its metrics are. The CLI, serve/stop, the load runner, the locust process and the bench
job read this registry; none of them spells a server's name.

Adding a server is one `register(Target(...))`: here for the kit's own servers, or in a Python
file named by DEPLOYBENCH_TARGETS (os.pathsep-separated paths or module names), which every
process of the kit imports on first use of the registry, the locust process included.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import SplitResult, urlsplit, urlunsplit

from deploybench.errors import DeploybenchError, UsageError
from deploybench.serving import clients, native, payload

PLUGINS_ENV = "DEPLOYBENCH_TARGETS"
FRAMEWORKS = {"tensorflow": "TensorFlow", "pytorch": "PyTorch",
              "any": "any framework"}  # a server the kit did not start (the oip target)


@dataclass(frozen=True)
class Endpoint:
    """One address a target listens on. `locust_option` names the locustfile option (and,
    upper-cased, its DEPLOYBENCH_* variable) that points the load generator at it."""

    key: str
    default: str  # "http://127.0.0.1:8501" or "127.0.0.1:8500" (gRPC)
    locust_option: str = ""

    @property
    def env_var(self) -> str:
        return "DEPLOYBENCH_" + self.locust_option.upper().replace("-", "_")


@dataclass(frozen=True)
class Protocol:
    """How one protocol of a target is spoken. `body` is the request encoding (a key of
    payload.BODIES) and picks the locust user's base class; `client` builds the kit's client
    from the target's addresses (its `connect` classmethod)."""

    name: str  # rest | grpc | npy | ...
    label: str  # REST, gRPC, REST .npy
    endpoint: str  # the key of the target endpoint it talks to
    body: str
    client: type
    locust_user: str  # the class name locust lists (its web UI, the headless command line)
    # bad inputs (serving/bad_inputs.py's case names) that a server the kit does not build
    # answers by design with something else than a refusal, each with why: the bad-input
    # matrix records them as such instead of failing
    by_design: tuple[tuple[str, str], ...] = ()
    # bad inputs that bring the server down (a known bug of a server the kit does not build),
    # each with why: the matrix does not send them, and lists each as a failure
    crashes: tuple[tuple[str, str], ...] = ()
    # why the server answers 5xx for some malformed bodies by design (the fuzzer then takes a
    # 5xx with a one-line message on a connection kept open as an answer); "" if never
    server_errors: str = ""
    # why a refusal's message may span lines (the server quotes the request's own text); "" if
    # it never does
    multiline_errors: str = ""

    @property
    def binary(self) -> bool:
        """Whether its requests carry raw tensor bytes (gRPC, .npy, OIP binary), not JSON."""
        return payload.BODIES[self.body].content_type != payload.JSON_CONTENT_TYPE


@dataclass(frozen=True)
class TimeFigure:
    """One time a server publishes about its requests (loadtest/server_metrics.py reads it):
    a Prometheus histogram named `metric` (its _bucket/_sum/_count), or, with `count`, a
    cumulative-time counter divided by that request counter (a mean only)."""

    metric: str
    unit_ms: float  # one unit of the metric in ms: microseconds 0.001, seconds 1000
    count: str = ""
    model_label: str = "model_name"  # the label naming the model ("": none, all samples)
    labels: tuple[tuple[str, str], ...] = ()  # only samples with these label values


@dataclass(frozen=True)
class BatchFigure:
    """The sizes of the batches a server ran: a histogram of sizes, (with `size_label`) a
    counter per size, or (with `batches`) the mean size, `metric` counting rows or requests
    and `batches` the batches run; `counts` says what a size counts: rows or requests."""

    metric: str
    counts: str  # "rows" | "requests"
    size_label: str = ""
    batches: str = ""
    model_label: str = "model_name"
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ServerMetrics:
    """What a server's metrics say about where a request's time goes: the whole request inside
    the server, its wait in the queue, the model; None where the server publishes no such
    figure (the report names it)."""

    request: TimeFigure | None = None
    queue: TimeFigure | None = None
    model: TimeFigure | None = None
    # moving a request's tensors into and out of the model, where the server times it apart
    # from the model's run (Triton's compute input and output)
    model_input: TimeFigure | None = None
    model_output: TimeFigure | None = None
    batch: BatchFigure | None = None


@dataclass(frozen=True)
class Knob:
    """One setting of a server that `deploybench tune` may change and a profile may give: a
    field of ServerSettings (deploybench/settings.py, .env gives its default), what it means
    on this server, the values the tuner tries, in order, and the range a profile may name.
    `needs`: the switch (a boolean knob) that must be on for this one to matter."""

    setting: str
    meaning: str
    tries: tuple[int, ...]
    low: int = 0
    high: int = 1
    needs: str = ""
    boolean: bool = False

    def check(self, value: object) -> str:
        """Why `value` is not one this knob takes ("" if it is)."""
        if self.boolean:
            return "" if isinstance(value, bool) else "expected true or false"
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected a whole number"
        if not self.low <= value <= self.high:
            return f"out of range [{self.low}, {self.high}]"
        return ""


# The knobs several servers share; the CPUs and memory a server gets are limits, not knobs.
# A server's knobs are walked in its declared order: threads first, since the default (one
# per core of the machine) oversubscribes a server held to fewer cores
BATCHING = Knob("batching", "dynamic batching", (False, True), boolean=True)
BATCH_SIZE = Knob("max_batch_size", "the largest batch the batcher forms", (2, 4, 8, 16), 1, 256,
                  needs="batching")
BATCH_WAIT = Knob("batch_timeout_ms", "ms a request waits for others to join its batch",
                  (1, 2, 5, 10, 20), 0, 10_000, needs="batching")
THREADS = Knob("intra_op_threads", "intra-op threads of the model's runtime", (1, 2, 4), 1, 256)


def workers(meaning: str) -> Knob:
    return Knob("workers", meaning, (1, 2, 3, 4), 1, 64)


# (target folder, models, settings, addresses, overrides) -> (command, extra environment)
NativeStart = Callable[["native.NativeSetup"], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class Target:
    name: str
    label: str  # the name a report shows
    framework: str  # a key of FRAMEWORKS
    artifact_format: str  # the manifest format it serves
    protocols: tuple[Protocol, ...]
    endpoints: tuple[Endpoint, ...]
    native: NativeStart | None = None  # None: not startable by the kit natively
    compose_service: str | None = None
    metrics: tuple[str, str] | None = None  # (endpoint key, path) of its Prometheus metrics
    time_metrics: ServerMetrics | None = None  # what on that page says where the time goes
    batching: bool = True  # dynamic batching (MAX_BATCH_SIZE, BATCH_TIMEOUT_MS) is offered
    # the server software, when several targets run it (one per framework): reports compare
    # its frameworks side by side; "" means the label
    software: str = ""
    # a server the kit never starts (measured at --url): left out of "all"
    external: bool = False
    # why the server closes the connection after each refusal, when it does so by design (its
    # answer says `Connection: close`): the bad-input matrix then allows a new connection
    closes_after_error: str = ""
    # what `deploybench tune` searches and a profile may set, in the order the tuner walks them
    knobs: tuple[Knob, ...] = ()
    # the server a load-generator check runs against when none is named: one the kit runs
    # natively wherever it installs
    reference: bool = False
    # measured by `deploybench run` unless --servers says otherwise: the mission's two servers
    # and KServe, which hosts both frameworks with the same code (`make run` fits in 5 minutes
    # on two cores); the rest with --servers all
    main_run: bool = True

    def knob(self, name: str) -> Knob:
        for knob in self.knobs:
            if knob.setting == name:
                return knob
        known = ", ".join(k.setting for k in self.knobs) or "none"
        raise UsageError(f"{self.name} has no knob {name!r}; its knobs: {known}")

    def protocol(self, name: str) -> Protocol:
        for protocol in self.protocols:
            if protocol.name == name:
                return protocol
        raise UsageError(f"{self.name} does not speak {name}; it speaks "
                         f"{', '.join(self.protocol_names)}")

    @property
    def protocol_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.protocols)

    def endpoint(self, key: str) -> Endpoint:
        for endpoint in self.endpoints:
            if endpoint.key == key:
                return endpoint
        raise KeyError(f"{self.name} has no endpoint {key!r}")

    @property
    def framework_label(self) -> str:
        return FRAMEWORKS.get(self.framework, self.framework)

    def label_of(self, protocol: str) -> str:
        """The display name of this server speaking `protocol` ("TorchServe REST .npy")."""
        return f"{self.label} {self.protocol(protocol).label}"

    def describe(self, protocol: str | None = None) -> dict[str, str]:
        """The fields every record about this target carries, so reports need no registry."""
        fields = {"target": self.name, "target_label": self.label,
                  "framework": self.framework, "software": self.software or self.label}
        if protocol is not None:
            fields |= {"protocol": protocol, "protocol_label": self.protocol(protocol).label}
        return fields


_TARGETS: dict[str, Target] = {}
_PLUGINS_LOADED: set[str] = set()


def register(target: Target) -> Target:
    """Add (or replace) a target; returns it, so a plugin can keep a handle."""
    if target.framework not in FRAMEWORKS:
        raise ValueError(f"{target.name}: unknown framework {target.framework!r}")
    for protocol in target.protocols:
        target.endpoint(protocol.endpoint)  # a protocol must name one of its endpoints
        if protocol.body not in payload.BODIES:
            raise ValueError(f"{target.name}/{protocol.name}: unknown request body "
                             f"{protocol.body!r}; known: {', '.join(payload.BODIES)}")
    _TARGETS[target.name] = target
    return target


def unregister(name: str) -> None:
    """Remove a target (a test's own, when it ends)."""
    _TARGETS.pop(name, None)


def _load_plugins() -> None:
    """Import every entry of DEPLOYBENCH_TARGETS not imported yet in this process."""
    for entry in filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)):
        if entry in _PLUGINS_LOADED:
            continue
        _PLUGINS_LOADED.add(entry)
        try:
            if entry.endswith(".py"):
                path = Path(entry)
                spec = importlib.util.spec_from_file_location(f"_deploybench_targets_{path.stem}",
                                                              path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {path}")
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            else:
                importlib.import_module(entry)
        except Exception as error:  # a broken plugin is a one-line error, not a traceback
            raise DeploybenchError(f"{PLUGINS_ENV}: cannot load {entry}: "
                                   f"{type(error).__name__}: {error}") from error


def targets() -> dict[str, Target]:
    """Every registered target, by name, the kit's own first."""
    _load_plugins()
    return dict(_TARGETS)


def get(name: str) -> Target:
    known = targets()
    if name not in known:
        raise UsageError(f"unknown server {name!r}; known: {', '.join(known)}")
    return known[name]


def reference_target() -> str:
    """The target a load-generator check runs against by default (`reference=True`)."""
    return next(name for name, target in targets().items() if target.reference)


def parse_targets(text: str) -> tuple[str, ...]:
    """A comma-separated list of target names ('all': every one the kit starts; 'main': those
    `deploybench run` measures by default), checked."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == ["all"]:  # every server the kit starts
        return tuple(name for name, target in targets().items() if not target.external)
    if names == ["main"]:
        return tuple(name for name, target in targets().items()
                     if not target.external and target.main_run)
    unknown = [name for name in names if name not in targets()]
    if unknown or not names:
        raise UsageError(f"unknown server(s) {unknown or [text]}; known: "
                         f"{', '.join(targets())}, all or main")
    return tuple(dict.fromkeys(names))


def pairs(target: str, protocol: str | None) -> list[tuple[str, str]]:
    """(target, protocol) pairs for `--target NAME[,NAME...]|all` and
    `--protocol NAME[,NAME...]|None`: with protocols, what each chosen target speaks of them."""
    chosen = parse_targets(target)
    known = sorted({p.name for t in targets().values() for p in t.protocols})
    wanted = None if protocol is None else [p.strip() for p in protocol.split(",") if p.strip()]
    unknown = [p for p in wanted or [] if p not in known]
    if unknown or wanted == []:
        raise UsageError(f"unknown protocol {', '.join(unknown) or protocol!r}: "
                         f"{', '.join(known)}")
    found = [(t, p) for t in chosen for p in get(t).protocol_names
             if wanted is None or p in wanted]
    if not found:
        get(chosen[0]).protocol((wanted or [""])[0])  # raises: names what the target speaks
    return found


def at_url(pairs: list[tuple[str, str]], url: str, endpoints: Endpoints
           ) -> tuple[list[tuple[str, str]], Endpoints]:
    """`--url`: one target's address, given. A URL (http://host:port) is where its REST
    protocols are, host:port where its gRPC ones are; the pairs are those it points at."""
    names = {target for target, _ in pairs}
    if len(names) != 1:
        raise UsageError(f"--url is one server's address: name one --target, not "
                         f"{', '.join(sorted(names))}")
    (name,) = names
    target = get(name)
    rest = "://" in url
    if host_port(url)[1] is None:
        raise UsageError(f"--url {url!r} has no port")
    chosen = [(t, p) for t, p in pairs
              if ("://" in target.endpoint(target.protocol(p).endpoint).default) == rest]
    if not chosen:
        kind = "a URL (http://host:port)" if not rest else "host:port"
        raise UsageError(f"--url {url!r} cannot reach {name}/{pairs[0][1]}: give {kind}")
    keys = {target.protocol(p).endpoint for _, p in chosen}
    return chosen, Endpoints(endpoints.to_dict(), **{f"{name}_{key}": url for key in keys})


def run_pairs(servers: tuple[str, ...], binary_only: bool = False) -> list[tuple[str, str]]:
    """What `deploybench run` measures by default: each server's first JSON protocol (TF
    Serving's REST body, the same bytes to every server that takes it) and its first binary
    one; `binary_only`: the binary one alone."""
    found = []
    for name in servers:
        protocols = get(name).protocols
        json_one = next((p for p in protocols if not p.binary), None)
        binary_one = next((p for p in protocols if p.binary), None)
        for protocol in (binary_one,) if binary_only else (json_one, binary_one):
            if protocol is not None:
                found.append((name, protocol.name))
    return found


def label(target: str, protocol: str | None = None) -> str:
    """A server's display name (with its protocol's), or the bare name if it is unknown here."""
    found = targets().get(target)
    if found is None:
        return f"{target} {protocol}" if protocol else target
    return found.label_of(protocol) if protocol else found.label


# --- where the targets listen ---------------------------------------------------------------


def split_address(address: str) -> SplitResult:
    """An address parsed alike whether it is a URL ("http://host:port") or gRPC's "host:port"."""
    return urlsplit(address if "://" in address else f"//{address}")


def host_port(address: str) -> tuple[str, int | None]:
    parts = split_address(address)
    return parts.hostname or "127.0.0.1", parts.port


def shift_port(address: str, offset: int) -> str:
    """`address` ("http://host:port" or "host:port") with its port moved by `offset`."""
    if not offset:
        return address
    parts = split_address(address)
    if parts.port is None:
        raise ValueError(f"no port in {address!r}")
    netloc = f"{parts.hostname}:{parts.port + offset}"
    if "://" not in address:
        return netloc
    return urlunsplit(parts._replace(netloc=netloc))


class Endpoints(Mapping[str, str]):
    """Where every target listens: flat keys "<target>_<endpoint key>" -> address
    ("torchserve_inference", "tfserving_grpc"), the registry's loopback defaults unless given.

        Endpoints(tfserving_rest="http://127.0.0.1:9501")   # one moved, the rest as declared
        Endpoints.loopback(offset=10)                         # every published port + 10
    """

    def __init__(self, addresses: Mapping[str, str] | None = None, /, **given: str) -> None:
        defaults = {f"{t.name}_{e.key}": e.default for t in targets().values()
                    for e in t.endpoints}
        self._values = {**defaults, **(addresses or {}), **given}

    @classmethod
    def loopback(cls, offset: int = 0) -> Endpoints:
        return cls({f"{t.name}_{e.key}": shift_port(e.default, offset)
                    for t in targets().values() for e in t.endpoints})

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> str:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"Endpoints({self._values!r})"

    def of(self, target: str) -> dict[str, str]:
        """One target's addresses, by endpoint key."""
        return {e.key: self[f"{target}_{e.key}"] for e in get(target).endpoints}

    def address(self, target: str, protocol: str) -> str:
        """The address `protocol` of `target` talks to."""
        return self[f"{target}_{get(target).protocol(protocol).endpoint}"]

    def metrics_url(self, target: str) -> str | None:
        found = get(target)
        if found.metrics is None:
            return None
        key, path = found.metrics
        return self[f"{target}_{key}"].rstrip("/") + path

    def to_dict(self) -> dict[str, str]:
        return dict(self._values)


def loopback_endpoints(offset: int = 0) -> Endpoints:
    """The published ports on 127.0.0.1, shifted by `offset` (to run beside something else)."""
    return Endpoints.loopback(offset)


def make_client(target: str, protocol: str, model: str, endpoints: Endpoints | None = None,
                input_name: str = "pixels", output_name: str = "logits",
                timeout: float = 30.0) -> clients.PredictClient:
    """The kit's client for `target` speaking `protocol` about `model`."""
    declared = get(target).protocol(protocol)
    addresses = (endpoints or Endpoints()).of(target)
    return declared.client.connect(addresses, model, input_name=input_name,
                                   output_name=output_name, timeout=timeout)


# --- the kit's own servers --------------------------------------------------------------------

# What TF Serving answers by design (tensorflow_serving/util/json_tensor.cc, predict_util.cc):
# the load stage counts a non-finite answer as a wrong one (loadtest/samples.py)
TFSERVING_NAN = ("non-finite value", "its JSON parser reads NaN and Infinity "
                 "(kParseNanAndInfFlag), and no check refuses a non-finite tensor value")
TFSERVING_ROWS = ("more rows than max_rows", "it sets no limit on a request's rows")
TFSERVING_EMPTY = ("empty batch", "a tensor of 0 rows goes to the model: its answer of 0 rows, "
                   "or the model's own error")
# gRPC's own layer answers INTERNAL for bytes it cannot parse as the request message
TFSERVING_UNPARSED = tuple((case, "gRPC answers INTERNAL for bytes that are not a "
                            "PredictRequest, before TF Serving sees them")
                           for case in ("not the protocol's format", "truncated body"))

register(Target(
    name="tfserving",
    label="TF Serving",
    framework="tensorflow",
    artifact_format="savedmodel",
    protocols=(
        Protocol("rest", "REST", "rest", "json", clients.TFServingREST, "TFServingRESTUser",
                 by_design=(TFSERVING_NAN, TFSERVING_ROWS)),
        Protocol("grpc", "gRPC", "grpc", "tfserving-grpc", clients.TFServingGRPC,
                 "TFServingGRPCUser",
                 by_design=(TFSERVING_NAN, TFSERVING_ROWS, TFSERVING_EMPTY,
                            *TFSERVING_UNPARSED)),
    ),
    endpoints=(
        Endpoint("rest", "http://127.0.0.1:8501", "tfserving-rest-url"),
        Endpoint("grpc", "127.0.0.1:8500", "tfserving-grpc-target"),
    ),
    native=native.tfserving_native,
    compose_service="tfserving",
    knobs=(THREADS, BATCHING, BATCH_SIZE, BATCH_WAIT,
           Knob("rest_threads", "REST threads (--rest_api_num_threads)", (8, 16, 32, 64), 1,
                1024)),
    metrics=("rest", "/monitoring/prometheus/metrics"),  # serving/config/monitoring.config
    # tensorflow_serving/servables/tensorflow/util.cc and batching/batching_session.cc: wall
    # times in microseconds; the batching session's figures carry no model label
    time_metrics=ServerMetrics(
        request=TimeFigure(":tensorflow:serving:request_latency", 0.001),
        model=TimeFigure(":tensorflow:serving:runtime_latency", 0.001),
        queue=TimeFigure(":tensorflow:serving:batching_session:queuing_latency", 0.001,
                         model_label=""),
        batch=BatchFigure(":tensorflow:serving:batching_session:processed_batch_size", "rows",
                          model_label=""),
    ),
))

register(Target(
    name="torchserve",
    label="TorchServe",
    framework="pytorch",
    artifact_format="mar",
    protocols=(
        Protocol("rest", "REST", "inference", "json", clients.TorchServeREST,
                 "TorchServeRESTUser"),
        # TorchServe's binary body (payload.encode_npy): its counterpart of TF Serving's gRPC
        Protocol("npy", "REST .npy", "inference", "npy", clients.TorchServeNpy,
                 "TorchServeNpyUser"),
    ),
    endpoints=(
        Endpoint("inference", "http://127.0.0.1:8080", "torchserve-url"),
        Endpoint("management", "http://127.0.0.1:8081"),
        Endpoint("metrics", "http://127.0.0.1:8082"),
        # TorchServe always opens its gRPC ports too (there is no switch to turn them off)
        Endpoint("grpc_inference", "127.0.0.1:7070"),
        Endpoint("grpc_management", "127.0.0.1:7071"),
    ),
    native=native.torchserve_native,
    compose_service="torchserve",
    knobs=(THREADS, BATCHING, BATCH_SIZE, BATCH_WAIT,
           workers("workers per model (processes, each with its own copy of the model)")),
    reference=True,
    closes_after_error=("TorchServe's frontend closes the connection after every answer of "
                        "status 400 or more (NettyUtils.sendHttpResponse), saying "
                        "`Connection: close`"),
    metrics=("metrics", "/metrics"),
    # the front end's cumulative microseconds per model (TorchServe's own), and the model's
    # forward pass as the kit's handler reports it through TorchServe's metrics
    # (serving/handler.py, serving/config/torchserve-metrics.yaml)
    time_metrics=ServerMetrics(
        request=TimeFigure("ts_inference_latency_microseconds", 0.001,
                           count="ts_inference_requests_total"),
        queue=TimeFigure("ts_queue_latency_microseconds", 0.001,
                         count="ts_inference_requests_total"),
        model=TimeFigure("DeploybenchModelMs", 1.0, count="DeploybenchModelRequests",
                         model_label="ModelName"),
        batch=BatchFigure("DeploybenchBatches", "requests", size_label="BatchSize",
                          model_label="ModelName"),
    ),
))

def oip_protocols(user_prefix: str) -> tuple[Protocol, ...]:
    """The Open Inference Protocol's three ways, on endpoints `rest` and `grpc`."""
    return (
        Protocol("v2-rest", "V2 REST", "rest", "oip-json", clients.OIPRest,
                 f"{user_prefix}V2RESTUser"),
        Protocol("v2-binary", "V2 binary", "rest", "oip-binary", clients.OIPBinary,
                 f"{user_prefix}V2BinaryUser"),
        Protocol("v2-grpc", "V2 gRPC", "grpc", "oip-grpc", clients.OIPGRPC,
                 f"{user_prefix}V2GRPCUser"),
    )


# KServe's model server, one process per runtime with the same code (serving/kserve_server.py):
# the SavedModel in TensorFlow, the AOTInductor package in torch, and the PyTorch twin's ONNX
# in ONNX Runtime, the neutral runtime: beside KServe-PyTorch it shows how much of a serving
# difference is the runtime's (same twin, same server), beside KServe-TensorFlow the rest
for _runtime, _framework, _served, _label, _rest, _grpc in (
        ("tensorflow", "tensorflow", "savedmodel", "TensorFlow", 8090, 8091),
        ("pytorch", "pytorch", "aoti", "PyTorch", 8092, 8093),
        ("onnxruntime", "pytorch", "onnx-torch", "ONNX Runtime", 8094, 8095)):
    _user = "KServe" + _label.replace(" ", "")
    register(Target(
        main_run=_runtime != "onnxruntime",
        name=f"kserve-{_runtime}",
        label=f"KServe-{_label}",
        framework=_framework,
        artifact_format=_served,
        protocols=(
            # V1 is TF Serving's REST predict API: the very bytes TF Serving gets
            Protocol("v1", "V1 REST", "rest", "json", clients.KServeV1, f"{_user}V1User"),
            *oip_protocols(_user),
        ),
        endpoints=(
            Endpoint("rest", f"http://127.0.0.1:{_rest}", f"kserve-{_runtime}-url"),
            Endpoint("grpc", f"127.0.0.1:{_grpc}", f"kserve-{_runtime}-grpc-target"),
        ),
        native=native.kserve_native(_runtime),
        compose_service=f"kserve-{_runtime}",
        # one process (its `workers` cannot start with TensorFlow loaded), no batching
        knobs=(THREADS,),
        metrics=("rest", "/metrics"),
        # kserve/metrics.py: the predict call, in seconds (prometheus_client's default buckets)
        time_metrics=ServerMetrics(model=TimeFigure("request_predict_seconds", 1000.0)),
        batching=False,  # none in KServe's Python server (on Kubernetes: a separate agent)
        software="KServe",
    ))

# NVIDIA Triton Inference Server (tritonserver from nvidia-pytriton, its Python backend running
# serving/triton_model.py), one process per framework with the same code, as for KServe; in an
# environment of its own (numpy<2), started by serving/triton_server.py
TRITON_JSON_500 = ("Triton's HTTP front end answers 500 for a JSON body it cannot read as "
                   "tensors (http_server.cc), before the model sees it; the connection stays")
TRITON_UNREADABLE = tuple((case, TRITON_JSON_500) for case in (
    "not the protocol's format", "negative size in a header"))
TRITON_GRPC_UNPARSED = tuple((case, "gRPC answers INTERNAL for bytes that are not a "
                              "ModelInferRequest, before Triton sees them")
                             for case in ("not the protocol's format", "truncated body"))
TRITON_FLOAT_RANGE = ("value beyond float32", "Triton's JSON reader turns a number beyond "
                      "float32 into infinity before the model sees it: the kit's check then "
                      "refuses it as a non-finite value")
TRITON_HUGE_SHAPE = ("huge size in a header", "Triton 2.51's HTTP front end allocates what a "
                     "JSON input's shape declares before reading its data: a shape of 2**31 "
                     "rows aborts tritonserver (std::bad_alloc), one request takes the server "
                     "down")


def triton_protocols(user_prefix: str) -> tuple[Protocol, ...]:
    """The Open Inference Protocol as Triton's own C++ front ends speak it."""
    rest, binary, grpc = oip_protocols(user_prefix)
    quoted = ("Triton quotes a request's own text in its refusal (a parameter's name, newlines "
              "and all)")
    json_errors = tuple((case, TRITON_JSON_500) for case in (
        "wrong size for the declared shape", "ragged rows", "truncated body"))
    return (
        replace(rest, by_design=(*TRITON_UNREADABLE, *json_errors, TRITON_FLOAT_RANGE),
                crashes=(TRITON_HUGE_SHAPE,), server_errors=TRITON_JSON_500,
                multiline_errors=quoted),
        replace(binary, by_design=TRITON_UNREADABLE, server_errors=TRITON_JSON_500,
                multiline_errors=quoted),
        replace(grpc, by_design=TRITON_GRPC_UNPARSED, multiline_errors=quoted),
    )


for _runtime, _framework, _served, _label, _port in (
        ("tensorflow", "tensorflow", "savedmodel", "TensorFlow", 8000),
        ("pytorch", "pytorch", "aoti", "PyTorch", 8003)):
    _user = "Triton" + _label
    register(Target(
        main_run=False,
        name=f"triton-{_runtime}",
        label=f"Triton-{_label}",
        framework=_framework,
        artifact_format=_served,
        protocols=triton_protocols(_user),
        endpoints=(
            Endpoint("rest", f"http://127.0.0.1:{_port}", f"triton-{_runtime}-url"),
            Endpoint("grpc", f"127.0.0.1:{_port + 1}", f"triton-{_runtime}-grpc-target"),
            Endpoint("metrics", f"http://127.0.0.1:{_port + 2}"),
        ),
        native=native.triton_native(_runtime),
        compose_service=f"triton-{_runtime}",
        knobs=(THREADS, BATCHING, BATCH_SIZE, BATCH_WAIT,
               workers("model instances (instance_group count, a backend process each)")),
        metrics=("metrics", "/metrics"),
        # Triton's cumulative microseconds per model (metrics.md), over its successful requests
        time_metrics=ServerMetrics(
            request=TimeFigure("nv_inference_request_duration_us", 0.001,
                               count="nv_inference_request_success", model_label="model"),
            queue=TimeFigure("nv_inference_queue_duration_us", 0.001,
                             count="nv_inference_request_success", model_label="model"),
            model_input=TimeFigure("nv_inference_compute_input_duration_us", 0.001,
                                   count="nv_inference_request_success", model_label="model"),
            model=TimeFigure("nv_inference_compute_infer_duration_us", 0.001,
                             count="nv_inference_request_success", model_label="model"),
            model_output=TimeFigure("nv_inference_compute_output_duration_us", 0.001,
                                    count="nv_inference_request_success", model_label="model"),
            batch=BatchFigure("nv_inference_count", "rows", batches="nv_inference_exec_count",
                              model_label="model"),
        ),
        software="Triton",
    ))

# Any Open Inference Protocol endpoint the kit did not start (Triton, MLServer, OpenVINO Model
# Server, a KServe InferenceService): `deploybench load --target oip --url URL` (Triton's ports
# by default)
register(Target(
    name="oip",
    label="OIP endpoint",
    framework="any",
    artifact_format="",
    protocols=oip_protocols("OIP"),
    endpoints=(
        Endpoint("rest", "http://127.0.0.1:8000", "oip-url"),
        Endpoint("grpc", "127.0.0.1:8001", "oip-grpc-target"),
    ),
    batching=False,
    external=True,
))
