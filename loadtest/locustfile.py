"""deploybench's locustfile: the same golden requests to every server target the kit declares
(serving/targets.py): one user class per target and protocol, e.g. TFServingRESTUser,
TFServingGRPCUser, TorchServeRESTUser and TorchServeNpyUser (TorchServe's binary .npy body).

Run it as is (deploybench installed, e.g. `make setup`):

    locust -f loadtest/locustfile.py --class-picker         # web UI on 127.0.0.1, pick a target
    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 30s TorchServeRESTUser

Options (also environment variables, a locust.conf, or the web UI's custom parameters):
--export-root/--model pick the golden samples (golden.npz, path from the model's manifest.json);
one address option per target endpoint says where the servers are (--torchserve-url,
--tfserving-rest-url, --tfserving-grpc-target for the kit's own; `--help` lists them all);
--warmup-seconds is left out of every figure; --measure-seconds ends the run after the window;
--rate-per-user > 0 turns each user into an open-loop Poisson arrival process (latency from
the scheduled send time, coordinated-omission safe); --summary-file receives exact latencies
(HDR histograms), wrong answers and the load generator's CPU when the test stops.

Every answer is checked against the golden output of its sample: a wrong answer is a failure
("WrongAnswer: ..."), so "fast but wrong" never looks good. This process imports numpy,
locust, grpc, hdrhistogram and prometheus_client only: never TensorFlow or torch (gevent and
their runtimes do not mix, and the load generator must stay light).

Beside the web UI it serves /deploybench/metrics: the kit's exact figures as Prometheus metrics
(docker-compose.yml's monitoring profile scrapes the master).

Distributed (`--master` / `--worker`, e.g. the compose services locust-master/locust-worker):
options given to the master reach the workers; each worker loads the golden samples itself
(--export-root must exist on the workers, not on the master), records its own window, and
ships what it recorded since its last report (HDR histogram, counts, wrong answers, its CPU)
with locust's own stats report; the master adds them up exactly and writes the summary.
--rate-per-user is per user, on whichever worker that user runs.

The locust image of docker-compose.yml installs deploybench itself (docker/locust/Dockerfile).
"""

from __future__ import annotations

import html
import json
import logging
import random
import socket
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import grpc
import grpc.experimental.gevent
from locust import User, constant, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from deploybench.errors import DeploybenchError
from deploybench.loadtest import histogram, wire
from deploybench.loadtest.recorder import Recorder, write_json
from deploybench.loadtest.samples import (
    NonFiniteAnswer,
    Samples,
    Signature,
    WrongAnswer,
    load_samples,
    synthetic_samples,
)
from deploybench.serving import payload, targets
from deploybench.serving.payload import PredictionError, error_message

grpc.experimental.gevent.init_gevent()  # grpc's own threads would block gevent's loop

log = logging.getLogger("deploybench.locust")
EARLY_STOP_CHECK_S = 0.5
METRICS_TIMEOUT_S = 3.0
RECORDER = Recorder()
_state: dict[str, Any] = {"environment": None, "samples": {}, "window": None, "error": None}


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    # Safe by default: the web UI listens on loopback unless --web-host says otherwise (locust's
    # own default is every interface). The compose service passes --web-host 0.0.0.0 inside its
    # container and publishes the port on the host's 127.0.0.1 only.
    parser.set_defaults(web_host="127.0.0.1")
    group = parser  # its own add_argument: custom options show in the web UI
    group.add_argument("--export-root", env_var="DEPLOYBENCH_ARTIFACTS", default="artifacts",
                       help="Export root holding <model>/manifest.json and golden.npz")
    group.add_argument("--model", env_var="DEPLOYBENCH_MODEL", default="digits-mlp",
                       help="Model to load-test (its golden samples are the requests)")
    group.add_argument("--batch-size", env_var="DEPLOYBENCH_BATCH_SIZE", type=int, default=1,
                       help="Golden rows per request")
    group.add_argument("--unchecked-signature", env_var="DEPLOYBENCH_UNCHECKED_SIGNATURE",
                       default="",
                       help="A model the kit did not export, as NAME:D1xD2...:OUTPUT (its "
                            "server's metadata): random inputs, answers not checked")
    for target in targets.targets().values():  # where each server is, as declared
        for endpoint in target.endpoints:
            if endpoint.locust_option:
                group.add_argument(f"--{endpoint.locust_option}", env_var=endpoint.env_var,
                                   default=endpoint.default,
                                   help=f"{target.label}: its {endpoint.key} address")
    group.add_argument("--warmup-seconds", env_var="DEPLOYBENCH_WARMUP_SECONDS", type=float,
                       default=0.0, help="Seconds after the start left out of every figure")
    group.add_argument("--measure-seconds", env_var="DEPLOYBENCH_MEASURE_SECONDS", type=float,
                       default=0.0,
                       help="Seconds measured after the warm-up, then the run ends (0: until "
                            "stopped)")
    group.add_argument("--rate-per-user", env_var="DEPLOYBENCH_RATE_PER_USER", type=float,
                       default=0.0,
                       help="Open loop: Poisson arrivals per second per user, latency from the "
                            "scheduled send time (0: closed loop, each user waits for its "
                            "answer)")
    group.add_argument("--max-in-flight", env_var="DEPLOYBENCH_MAX_IN_FLIGHT", type=int,
                       default=256, help="Open loop: requests one user keeps in flight at most")
    group.add_argument("--request-timeout", env_var="DEPLOYBENCH_REQUEST_TIMEOUT", type=float,
                       default=30.0, help="Seconds before a request counts as failed")
    group.add_argument("--decide-p99-ms", env_var="DEPLOYBENCH_DECIDE_P99_MS", type=float,
                       default=0.0,
                       help="Early stopping: end the window once the p99's 95%% interval lies "
                            "wholly under this bound (pass) or over it (fail); "
                            "--measure-seconds is then the most it lasts (0: off)")
    group.add_argument("--min-pass-requests", env_var="DEPLOYBENCH_MIN_PASS_REQUESTS", type=int,
                       default=662, help="Early stopping: the fewest requests a pass rests on")
    group.add_argument("--min-pass-seconds", env_var="DEPLOYBENCH_MIN_PASS_SECONDS", type=float,
                       default=0.0,
                       help="Early stopping: the shortest window a pass rests on (a server "
                            "that cannot keep up looks fine until its queue has grown)")
    group.add_argument("--slo", env_var="DEPLOYBENCH_SLO", default="",
                       help="SLO gates shown live in the web UI's deploybench tab, e.g. "
                            "p99<=100ms,wrong_answers==0 (deploybench load --slo's grammar)")
    group.add_argument("--metrics-url", env_var="DEPLOYBENCH_METRICS_URL", default="",
                       include_in_web_ui=False,
                       help="The server's Prometheus metrics page, read as the measurement "
                            "window opens and closes (the summary keeps both pages)")
    group.add_argument("--summary-file", env_var="DEPLOYBENCH_SUMMARY_FILE", default="",
                       include_in_web_ui=False,
                       help="Write exact latencies and answer checks here (JSON) at the end")


# -- the users ---------------------------------------------------------------------------------

class _PredictUser(User):
    """Sends golden requests, checks every answer. Closed loop by default; open loop (Poisson
    arrivals, each request on its own greenlet) when --rate-per-user > 0."""

    abstract = True
    wait_time = constant(0)
    target = ""  # set per generated class, from the registry
    protocol = ""
    body = ""  # the request encoding: samples.bodies[body]
    address_option = ""  # the parsed option holding the server's address

    def on_start(self) -> None:
        options = self.environment.parsed_options
        samples = _state["samples"].get(_samples_key(options))
        if samples is None:
            log.error("no request samples: %s", _state["error"] or "not loaded")
            raise StopUser()
        self.samples: Samples = samples
        self.model = options.model
        self.request_name = f"{self.target}/{self.protocol} {self.model}"
        self.timeout = float(options.request_timeout)
        self.rate = float(options.rate_per_user)
        self.max_in_flight = max(int(options.max_in_flight), 1)
        self.index = random.randrange(len(samples))
        RECORDER.describe(self.request_name, target=self.target, protocol=self.protocol,
                          model=self.model, open_loop=self.rate > 0)

    def next_index(self) -> int:
        self.index = (self.index + 1) % len(self.samples)
        return self.index

    @task
    def predict(self) -> None:
        if self.rate > 0:
            self.open_loop()
        else:
            self.send(self.next_index(), None)

    def open_loop(self) -> None:
        """Arrivals on a Poisson clock, whatever the answers do: a slow answer never delays the
        next send (no coordinated omission), and its latency counts from its scheduled time."""
        pool = gevent.pool.Pool(self.max_in_flight)
        clock = random.Random()
        due = time.perf_counter()
        try:
            while True:
                due += clock.expovariate(self.rate)
                delay = due - time.perf_counter()
                if delay > 0:
                    gevent.sleep(delay)
                RECORDER.scheduled(self.request_name)
                if pool.full():
                    RECORDER.in_flight_limit_hits += 1  # late sends still count from `due`
                pool.spawn(self.send, self.next_index(), due)
        finally:
            pool.kill(block=False)

    def send(self, index: int, due: float | None) -> None:
        raise NotImplementedError

    def report(self, index: int, response_time: float, exception: BaseException | None,
               service_ms: float | None) -> None:
        RECORDER.completed(self.request_name, response_time, exception, service_ms,
                           wrong=isinstance(exception, WrongAnswer),
                           nonfinite=isinstance(exception, NonFiniteAnswer),
                           length_bucket=self.samples.length_bucket(index))


class _RESTUser(_PredictUser):
    """POST the body to the server's predict path (the client class's PREDICT_PATH); answers
    are JSON predictions. Every request's bytes are built at the start: the clock covers the
    exchange on the wire only (loadtest/wire.py), the answer check and the statistics come
    after it."""

    abstract = True
    path_template = ""

    def on_start(self) -> None:
        super().on_start()
        try:
            self.connections = wire.Connections(self.host or "", self.timeout)
        except ValueError as error:
            log.error("%s: %s", self.request_name, error)
            raise StopUser() from None
        path = self.path_template.format(model=self.model)
        self.url = f"{self.host}{path}"
        encoding = payload.BODIES[self.body]
        self.requests = [self.connections.request(path, body, encoding.request_headers(body))
                         for body in self.samples.bodies[self.body]]

    def on_stop(self) -> None:
        connections = getattr(self, "connections", None)
        if connections is not None:
            connections.close()

    def send(self, index: int, due: float | None) -> None:
        RECORDER.sent(self.request_name)
        lag_ms = 0.0 if due is None else (time.perf_counter() - due) * 1000.0
        answer = self.connections.exchange(self.requests[index])
        service_ms = answer.seconds * 1000.0
        exception = self.check(answer, index)
        _fire(self, "POST", self.url, lag_ms + service_ms, len(answer.body), exception)
        self.report(index, lag_ms + service_ms, exception,
                    service_ms if due is not None else None)

    def check(self, answer: wire.Answer, index: int) -> Exception | None:
        if answer.status == 0:
            return ConnectionError(f"no answer from {self.host}: {answer.error}")
        if answer.status != 200:
            message = error_message(answer.body, answer.status)
            return PredictionError(f"HTTP {answer.status}: {message}")
        try:
            self.samples.check_answer(index, self.body, answer.body)
        except (WrongAnswer, PredictionError) as error:
            return error
        return None


def _fire(user: _PredictUser, request_type: str, url: str, response_time: float,
          length: int, exception: Exception | None) -> None:
    """Locust's request event (its statistics, web UI, CSV), after the clock has stopped."""
    user.environment.events.request.fire(
        request_type=request_type, name=user.request_name, response_time=response_time,
        response_length=length, exception=exception, context={}, url=url,
        start_time=time.time() - response_time / 1000.0)


class _GRPCUser(_PredictUser):
    """A unary gRPC call (the body's method: TF Serving's Predict, the Open Inference
    Protocol's ModelInfer): one channel per user, requests serialized once, the request event
    fired here with the measured response time."""

    abstract = True

    def on_start(self) -> None:
        super().on_start()
        self.address = getattr(self.environment.parsed_options, self.address_option)
        self.channel = grpc.insecure_channel(self.address)
        self.method = payload.BODIES[self.body].grpc_method
        # bytes in, bytes out: the request is serialized once, the answer parsed after timing
        self.call = self.channel.unary_unary(self.method, request_serializer=None,
                                             response_deserializer=None)

    def on_stop(self) -> None:
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()

    def send(self, index: int, due: float | None) -> None:
        body = self.samples.bodies[self.body][index]
        RECORDER.sent(self.request_name)
        start = time.perf_counter()
        lag_ms = 0.0 if due is None else (start - due) * 1000.0
        exception: Exception | None = None
        answer = b""
        try:
            answer = self.call(body, timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code()
            exception = PredictionError(f"gRPC {code.name if code else 'error'}: "
                                        f"{error.details()}")
        service_ms = (time.perf_counter() - start) * 1000.0
        if exception is None:
            try:
                self.samples.check_answer(index, self.body, answer)
            except (WrongAnswer, PredictionError) as error:
                exception = error
        _fire(self, "gRPC", f"grpc://{self.address}{self.method}", lag_ms + service_ms,
              len(answer), exception)
        self.report(index, lag_ms + service_ms, exception,
                    service_ms if due is not None else None)


# The user base class of each request body (payload.BODIES): REST or gRPC.
BASES: dict[str, type[_PredictUser]] = {
    name: _GRPCUser if body.grpc_method else _RESTUser for name, body in payload.BODIES.items()}


def _user_classes() -> list[type[_PredictUser]]:
    """One user class per target and protocol, named as the registry declares (locust lists
    the classes of this module: the web UI's class picker, the headless command line)."""
    made = []
    for target in targets.targets().values():
        for protocol in target.protocols:
            endpoint = target.endpoint(protocol.endpoint)
            base = BASES[protocol.body]
            made.append(type(protocol.locust_user, (base,), {
                "__module__": __name__,
                "__doc__": f"{target.label_of(protocol.name)}: golden requests, every answer "
                           f"checked.",
                "target": target.name, "protocol": protocol.name, "body": protocol.body,
                "address_option": endpoint.locust_option.replace("-", "_"),
                "path_template": getattr(protocol.client, "PREDICT_PATH", ""),
                "host": endpoint.default if base is _RESTUser else None,
            }))
    return made


USERS = _user_classes()
globals().update({user.__name__: user for user in USERS})
HTTP_USERS = [user for user in USERS if issubclass(user, _RESTUser)]


# -- the test's life: samples, hosts, the measurement window, the summary ------------------------

def _samples_key(options: Any) -> tuple[str, str, int, str]:
    return (str(Path(options.export_root).resolve()), options.model, int(options.batch_size),
            options.unchecked_signature)


def _bodies_needed(environment: Environment) -> tuple[str, ...]:
    """The request encodings of the user classes about to run: a step runs one, and encoding
    every golden sample in every body takes seconds for a large input (mobilenet-v2's JSON
    bodies are 3 MB an image)."""
    classes = environment.user_classes or list((environment.available_user_classes or {})
                                               .values())
    return tuple(sorted({c.body for c in classes if getattr(c, "body", "")})) or tuple(
        payload.BODIES)


def _prepare(environment: Environment) -> None:
    """Load the golden requests (once per model, each body once, when a class that sends it
    is about to run) and point the HTTP users at their servers."""
    options = environment.parsed_options
    key = _samples_key(options)
    _state["error"] = None
    cached = _state["samples"].get(key)
    needed = _bodies_needed(environment)
    missing = tuple(b for b in needed if cached is None or b not in cached.bodies)
    if missing:
        try:
            if options.unchecked_signature:
                found = synthetic_samples(Signature.parse(options.unchecked_signature),
                                          options.model, int(options.batch_size),
                                          encodings=missing)
            else:
                found = load_samples(Path(options.export_root), options.model,
                                     int(options.batch_size), encodings=missing)
        except (DeploybenchError, OSError, KeyError, ValueError) as error:
            _state["error"] = str(error)
            log.error("cannot load the golden requests: %s", error)
            environment.process_exit_code = 2
            if environment.parsed_options.headless and environment.runner is not None:
                gevent.spawn(environment.runner.quit)  # nothing worth measuring
            return
        if cached is None:
            _state["samples"][key] = found
        else:  # a class picked later in the web UI: its body beside the others
            cached.bodies.update({b: found.bodies[b] for b in missing})
    _apply_hosts(options)


def _apply_hosts(options: Any) -> None:
    """Point the HTTP users at the servers the options name, when those options changed (a
    host edited per class in the web UI, or --host, is left alone otherwise)."""
    applied = _state.setdefault("hosts", {})
    for user_class in HTTP_USERS:
        url = getattr(options, user_class.address_option).rstrip("/")
        if applied.get(user_class) != url:
            user_class.host = applied[user_class] = url


def _window(environment: Environment) -> None:
    """Warm-up, then the measurement window; ends the run after --measure-seconds."""
    options = environment.parsed_options
    if options.warmup_seconds > 0:
        gevent.sleep(options.warmup_seconds)
    runner = environment.runner
    scrapes = options.metrics_url and not isinstance(runner, WorkerRunner)
    if scrapes:
        RECORDER.server_metrics = {"url": options.metrics_url,
                                   "before": _metrics_page(options.metrics_url)}
    RECORDER.open_window()
    if runner is not None and not isinstance(runner, WorkerRunner):
        runner.stats.reset_all()  # locust's own CSV/HTML leave the warm-up out too
    if options.measure_seconds > 0:
        if options.decide_p99_ms > 0 and not isinstance(runner, WorkerRunner):
            _until_decided(options)  # the master decides on every worker's requests
        else:
            gevent.sleep(options.measure_seconds)
        RECORDER.close_window()
        if scrapes:
            RECORDER.server_metrics["after"] = _metrics_page(options.metrics_url)
        if options.headless and runner is not None and not isinstance(runner, WorkerRunner):
            log.info("measurement window over, stopping")
            runner.quit()


def _metrics_page(url: str) -> dict[str, str]:
    """The server's metrics page as text, or why not (parsed later, outside this process)."""
    import requests  # here: imported before locust's gevent patching, its ssl would break

    try:
        response = requests.get(url, timeout=METRICS_TIMEOUT_S)
    except requests.RequestException as error:
        return {"error": f"{type(error).__name__}: {error}"[:300]}
    if response.status_code != 200:
        return {"error": f"HTTP {response.status_code} from {url}"}
    return {"text": response.text}


def _until_decided(options: Any) -> None:
    """Early stopping (MLPerf's Server scenario, decided by the p99's interval): check every
    EARLY_STOP_CHECK_S; at --measure-seconds with no decision, the step is inconclusive."""
    began = time.monotonic()
    while True:
        gevent.sleep(EARLY_STOP_CHECK_S)
        elapsed = time.monotonic() - began
        decided = RECORDER.p99_decision(options.decide_p99_ms, options.min_pass_requests)
        if decided["decision"] == "pass" and elapsed < options.min_pass_seconds:
            decided["decision"] = None  # not yet: long enough for a backlog to show
        if decided["decision"] or elapsed >= options.measure_seconds:
            RECORDER.early_stop = {**decided, "decision": decided["decision"] or "inconclusive",
                                   "seconds": round(elapsed, 2),
                                   "min_pass_seconds": options.min_pass_seconds}
            return


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    _state["environment"] = environment
    if environment.parsed_options is not None:  # so the web UI shows the real hosts
        _apply_hosts(environment.parsed_options)
    if environment.web_ui is not None:
        _add_web_ui_tab(environment)
        if environment.available_user_classes:  # --class-picker
            _offer_answering_classes(environment)


# -- the web UI's class picker: only the servers that answer ----------------------------------

PROBE_TIMEOUT_S = 0.5
ABSENT_BANNER_ID = "deploybench-absent-servers"


def _listening(address: str) -> bool:
    """Whether something accepts a connection at a class's address (URL or host:port)."""
    host, port = targets.host_port(address)
    if port is None:
        return False
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _probe_classes(environment: Environment) -> list[str]:
    """Offer in the class picker only the user classes whose server answers at their address,
    so that Start as the page opens sends nothing to a closed port (locust ticks every class
    it offers); re-probed at each page load, so a server started later appears on reload.
    Returns the absent classes, as "Class (address)". Where none answers, every class stays
    offered (locust would otherwise drop the picker and run them all)."""
    every = _state.setdefault("every_class", dict(environment.available_user_classes))
    options = environment.parsed_options
    answers: dict[str, bool] = {}
    offered, absent = {}, []
    for name, user_class in sorted(every.items()):
        address = getattr(options, user_class.address_option, "") if options else ""
        if address not in answers:
            answers[address] = bool(address) and _listening(address)
        if answers[address]:
            offered[name] = user_class
        else:
            absent.append(f"{name} ({address or 'no address'})")
    environment.available_user_classes = offered or every
    environment.available_user_tasks = {name: tasks for name, tasks in
                                        _state.setdefault("every_task", dict(
                                            environment.available_user_tasks or {})).items()
                                        if name in environment.available_user_classes}
    return absent


def _offer_answering_classes(environment: Environment) -> None:
    """Probe before locust renders its page, and say on the page which classes were left
    out and why (a banner above locust's own form)."""
    from flask import request

    web_ui = environment.web_ui
    absent: list[str] = []

    @web_ui.app.before_request
    def _probe() -> None:
        if request.path == "/" and environment.runner is not None \
                and environment.runner.state in ("ready", "stopped"):
            absent[:] = _probe_classes(environment)

    @web_ui.app.after_request
    def _banner(response: Any) -> Any:
        if request.path == "/" and absent and response.mimetype == "text/html":
            if len(absent) == len(_state["every_class"]):
                said = ("No server answers at its address: every user class is offered. "
                        "Start the servers, then reload this page.")
            else:
                said = ("Left out of the user classes below, their server not answering at "
                        "its address (reload once it is up): " + "; ".join(absent) + ".")
            banner = (f'<div id="{ABSENT_BANNER_ID}" style="padding:8px 16px;'
                      f'background:#fff4e5;color:#663c00;font-family:sans-serif">'
                      f"{html.escape(said)}</div>")
            response.set_data(response.get_data(as_text=True).replace(
                "<body>", f"<body>{banner}", 1))
        return response


# -- the web UI's deploybench tab: exact figures, live ---------------------------------------------

TAB = "deploybench"
TAB_COLUMNS = (("name", "Request"), ("requests", "Requests"), ("failures", "Failures"),
               ("wrong_answers", "Wrong answers"), ("p50", "p50 ms"), ("p90", "p90 ms"),
               ("p99", "p99 ms"), ("p99_ci", "p99 95% interval"), ("p99_9", "p99.9 ms"),
               ("gates", "SLO gates"))


def _add_web_ui_tab(environment: Environment) -> None:
    """A tab beside locust's own (whose percentiles are rounded to about two digits): the
    kit's exact percentiles from the HDR histograms (on a master, merged from its workers),
    the p99's 95% interval, wrong answers and the --slo gates' state, as the kit computes them
    for its results. Locust keeps these template arguments on every page render."""
    from flask import request

    web_ui = environment.web_ui
    web_ui.template_args["extended_tabs"] = [{"title": "Exact latency (deploybench)",
                                              "key": TAB}]
    web_ui.template_args["extended_tables"] = [{"key": TAB, "structure": [
        {"key": key, "title": title} for key, title in TAB_COLUMNS]}]

    web_ui.app.add_url_rule(METRICS_PATH, "deploybench_metrics", _prometheus_page)

    @web_ui.app.after_request
    def _with_exact_figures(response: Any) -> Any:
        if request.path == "/stats/requests" and response.is_json:
            response.set_data(json.dumps({**response.json, "extended_stats": [
                {"key": TAB, "data": exact_rows(environment.parsed_options)}]}))
        return response


METRICS_PATH = "/deploybench/metrics"  # scraped by compose's monitoring profile


class ExactFigures:
    """The kit's figures as Prometheus metrics, for the monitoring profile's Prometheus: per
    request name, requests, failures and wrong answers in the current window, and the exact
    latency percentiles (from the HDR histograms; on a master, merged from its workers)."""

    LABELS = ["name", "target", "protocol", "model"]

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counters = {key: CounterMetricFamily(f"deploybench_{key}", text, labels=self.LABELS)
                    for key, text in (("requests", "Requests completed in the window"),
                                      ("failures", "Failed requests, wrong answers included"),
                                      ("wrong_answers", "Answers unlike the golden output"))}
        latency = GaugeMetricFamily("deploybench_latency_ms", "Exact latency percentile of "
                                    "correct answers in the window, ms",
                                    labels=[*self.LABELS, "quantile"])
        for name, tally in sorted(RECORDER.tallies.items()):
            values = [name, tally.target, tally.protocol, tally.model]
            for key, counter in counters.items():
                counter.add_metric(values, getattr(tally, key))
            figures = histogram.latency_ms(tally.latency)
            for key, percentile in histogram.PERCENTILES.items():
                if figures[key] is not None:
                    latency.add_metric([*values, f"{percentile / 100:g}"], figures[key])
        yield from (*counters.values(), latency)


def _prometheus_page() -> Any:
    from flask import Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExactFigures())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def exact_rows(options: Any) -> list[dict[str, str]]:
    """One row per request name: what the tab shows (strings, as locust's tables take them)."""
    from deploybench import slo
    from deploybench.loadtest import intervals

    gates = slo.parse(options.slo) if options is not None and options.slo else []
    rows = []
    for name, tally in sorted(RECORDER.tallies.items()):
        figures = histogram.latency_ms(tally.latency)
        ci = intervals.percentile_intervals(tally.latency)
        seconds = max(time.time() - (RECORDER.window_start or time.time()), 1e-9) if (
            RECORDER.window_end is None) else RECORDER.window_end - (RECORDER.window_start or 0)
        step = {"target": tally.target, "protocol": tally.protocol, "model": tally.model,
                "level": 0, "level_unit": "", "status": "ok", "requests": tally.requests,
                "failures": tally.failures, "wrong_answers": tally.wrong_answers,
                "throughput_rps": (tally.requests - tally.failures) / seconds,
                "latency_ms": figures, "latency_ci95_ms": ci}
        decided = [f"{d.gate}: {d.decision}" for d in slo.decide(gates, [step])]
        rows.append({
            "name": name, "requests": str(tally.requests), "failures": str(tally.failures),
            "wrong_answers": str(tally.wrong_answers),
            **{key: "-" if figures[key] is None else f"{figures[key]:.3f}"
               for key in ("p50", "p90", "p99", "p99_9")},
            "p99_ci": "[" + ", ".join("?" if v is None else f"{v:.3f}" for v in ci["p99"]) + "]",
            "gates": "; ".join(decided) or "(no --slo)"})
    return rows


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    if _state["window"] is not None:
        _state["window"].kill(block=False)
    RECORDER.reset()
    if not isinstance(environment.runner, MasterRunner):
        _prepare(environment)
    _state["window"] = gevent.spawn(_window, environment)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    window = _state["window"]
    if window is not None and window is not gevent.getcurrent():
        window.kill(block=False)
    RECORDER.close_window()
    write_summary(environment)


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    # after the master's last worker reports: the final word
    if _state["environment"] is not None:
        write_summary(_state["environment"])


@events.reset_stats.add_listener
def _on_reset_stats(**_: Any) -> None:
    RECORDER.clear()


@events.cpu_warning.add_listener
def _on_cpu_warning(**_: Any) -> None:
    RECORDER.cpu_warnings += 1


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_: Any) -> None:
    data["deploybench"] = RECORDER.take_delta()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    RECORDER.add_delta(client_id, data.get("deploybench"))


def write_summary(environment: Environment) -> None:
    """The figures locust does not keep, as JSON, for `deploybench load` (local or master)."""
    options = environment.parsed_options
    runner = environment.runner
    if options is None or not options.summary_file or isinstance(runner, WorkerRunner):
        return
    role = "master" if isinstance(runner, MasterRunner) else "local"
    summary = RECORDER.summary(
        role=role,
        options={key: getattr(options, key) for key in (
            "export_root", "model", "batch_size", "warmup_seconds", "measure_seconds",
            "rate_per_user", "max_in_flight")},
        locust_cpu_warning=bool(runner and (runner.cpu_warning_emitted
                                            or runner.worker_cpu_warning_emitted)),
        samples_error=_state["error"],
    )
    try:
        write_json(Path(options.summary_file), summary)
    except OSError as error:
        log.error("cannot write the summary %s: %s", options.summary_file, error)
