"""The `deploybench` command: one sub-command per stage."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from deploybench.errors import DeploybenchError, Terminated, UsageError
from deploybench.selection import resolve_models

app = typer.Typer(
    help="Compare how one model deploys through TensorFlow and PyTorch: export with parity "
         "gates, serving (TorchServe, KServe, Triton, TF Serving where it runs, any Open "
         "Inference Protocol endpoint) under load, edge runtimes (LiteRT, ExecuTorch, ONNX "
         "Runtime), and a report that answers from the measured figures.",
    no_args_is_help=True,
    # a docstring's line breaks are not the help's: paragraphs wrap to the terminal
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
errors = Console(stderr=True)


def log_file() -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return Path(os.environ.get("DEPLOYBENCH_LOG", state / "deploybench" / "deploybench.log"))


def setup_logging() -> None:
    path = log_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut the clean-up
    raise Terminated()


def _terminate_as_interrupt() -> Any:
    """SIGTERM raises Terminated (a KeyboardInterrupt) while a command runs, so its clean-up
    runs: Python's default would end the process at once and leave TorchServe and locust
    behind. Returns the handler to restore (None where signals cannot be set: not the main
    thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def command(func: Callable[..., Any] | None = None, *,
            name: str | None = None) -> Callable[..., Any]:
    """A CLI command whose failures are one readable line, with the detail in the log
    (`name`: the command's name where it is not the function's, e.g. a Python keyword)."""
    if func is None:
        return functools.partial(command, name=name)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        previous = _terminate_as_interrupt()
        try:
            return func(*args, **kwargs)
        except DeploybenchError as error:
            logging.getLogger("deploybench").error("%s", error)
            errors.print(f"[red]error:[/red] {error}", soft_wrap=True, highlight=False)
            raise typer.Exit(error.exit_code) from None
        except Terminated:
            errors.print(f"[red]{Terminated.why}[/red]")
            raise typer.Exit(Terminated.exit_code) from None
        except KeyboardInterrupt:
            errors.print("[red]interrupted[/red]")
            raise typer.Exit(130) from None
        except Exception as error:  # unexpected: one line here, the traceback in the log
            logging.getLogger("deploybench").exception("unexpected error")
            errors.print(
                f"[red]error:[/red] {type(error).__name__}: {error} (details in {log_file()})",
                soft_wrap=True, highlight=False,
            )
            raise typer.Exit(1) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return app.command(name)(wrapper)


@command
def export(
    model: Annotated[str, typer.Option(
        help="Model from the zoo or imported (`deploybench models` lists both), or 'all': "
             "every one.")] = "all",
    out: Annotated[Path, typer.Option(help="Export root folder.")] = Path("artifacts"),
    version: Annotated[int, typer.Option(min=1, help="Model version to write.")] = 1,
) -> None:
    """Export models to every format (SavedModel, TFLite, TorchScript and .mar, torch.export,
    AOTInductor, ExecuTorch; litert-torch and ONNX from both twins; the transformers and
    keras-hub folders of a hub-built model), gated on parity: a quantized or optional artifact
    that fails the gate is refused as a row, the model publishing with the rest. An imported
    model gets its framework's formats, any of which may fail as a row."""
    from deploybench.export.exporter import export as run_export
    from deploybench.zoo import get_spec

    specs = [get_spec(name) for name in resolve_models(model)]

    run_export(specs, out, console, version)


def parse_list(text: str, kind: type = str) -> list:  # noqa: ANN201
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise DeploybenchError(f"not a comma-separated list of {kind.__name__}: {text!r}") from None


@command
def serve(
    artifacts: Annotated[Path, typer.Option(help="Export root to serve.")] = Path("artifacts"),
    mode: Annotated[str | None, typer.Option(
        help="docker or native (default: docker when a Docker engine answers).")] = None,
    model: Annotated[str, typer.Option(
        help="Exported model to serve, or 'all': every model in the export root.")] = "all",
    servers: Annotated[str, typer.Option(
        help="Comma-separated servers (`deploybench servers` lists them), or all.")] = "all",
    port_offset: Annotated[int, typer.Option(help="Shift every published port by N.")] = 0,
    run_dir: Annotated[Path | None, typer.Option(help="Folder for logs and configs.")] = None,
    profile: Annotated[Path | None, typer.Option(help=PROFILE_HELP)] = None,
) -> None:
    """Start the servers; return once each answers a golden sample correctly."""
    from deploybench.serving.manager import serve as start
    from deploybench.serving.targets import loopback_endpoints, parse_targets

    chosen = parse_targets(servers)
    tuned = read_profile(profile)
    models = resolve_models(model, artifacts.resolve())
    deployment = start(artifacts, mode, models, run_dir, loopback_endpoints(port_offset), chosen,
                       log=lambda text: console.print(text, highlight=False), profile=tuned)
    if not deployment.up():
        from deploybench.serving.manager import stop as stop_servers

        stop_servers(deployment)
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in deployment.servers)
        raise DeploybenchError(f"no server could start: {reasons}")
    console.print(f"serving {', '.join(deployment.models)} in {deployment.mode} mode: "
                  f"{', '.join(deployment.up())}; stop with `deploybench stop`", highlight=False)


@command
def stop() -> None:
    """Stop exactly what `deploybench serve` started."""
    from deploybench.serving.manager import Deployment
    from deploybench.serving.manager import stop as stop_servers

    deployment = Deployment.load()
    stopped = stop_servers(deployment)
    if stopped:
        console.print(f"stopped {', '.join(stopped)}")
    elif deployment is not None:  # e.g. the server was killed: only its record was left
        console.print(f"nothing was still running; cleared the record of {deployment.run_dir}",
                      highlight=False)
    else:
        console.print("nothing to stop")


@command
def images() -> None:
    """Build the compose stack's images offline (a Debian base from debootstrap, wheels from
    this host's pip) and tag them as docker-compose.yml names them; idempotent."""
    from deploybench.formatting import mib
    from deploybench.serving.images import build_images

    with console.status("building images (details in .cache/images/build.log)"):
        rows = build_images(log=lambda text: console.print(text, highlight=False))
    for row in rows:
        size = f"{mib(row.size_bytes)} MiB" if row.size_bytes is not None else row.note
        console.print(f"{row.service}\t{row.image}\t{size}", highlight=False, soft_wrap=True)


@command
def models() -> None:
    """List the models: the zoo's, then those imported with `deploybench import`."""
    from deploybench.zoo import all_specs

    for spec in all_specs().values():
        console.print(f"{spec.name}\t{spec.source}\t{spec.description}", highlight=False)


@command(name="import")
def import_model(
    name: Annotated[str, typer.Argument(help="The name the kit will know the model by.")],
    keras: Annotated[Path | None, typer.Option(help="A Keras model file (.keras).")] = None,
    savedmodel: Annotated[Path | None, typer.Option(
        help="A SavedModel folder (its serving_default signature).")] = None,
    torch_export: Annotated[Path | None, typer.Option(
        help="A torch.export program (.pt2 from torch.export.save).")] = None,
    torch_factory: Annotated[str | None, typer.Option(
        help="module:function returning a torch.nn.Module (in eval mode).")] = None,
    python_path: Annotated[Path | None, typer.Option(
        help="Where --torch-factory's module imports from (default: here).")] = None,
    samples: Annotated[Path | None, typer.Option(
        help="Sample inputs: .npz, one array per model input, by name (float32, int32, "
             "int64); a fifth is held out as golden samples. Without: seeded random inputs "
             "within --range.")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="The samples' labels (.npy, one integer per row).")] = None,
    calibration: Annotated[Path | None, typer.Option(
        help="Inputs the int8 variants calibrate on (.npz; default: the samples not held "
             "out).")] = None,
    range_: Annotated[list[str] | None, typer.Option(
        "--range", help="An input's value range, NAME=LOW:HIGH (integers: 0:HIGH); "
                        "repeatable.")] = None,
    max_rows: Annotated[int, typer.Option(help="Most rows one request may carry.")] = 64,
    description: Annotated[str | None, typer.Option(help="One line for `models`.")] = None,
    replace: Annotated[bool, typer.Option(help="Import again over an earlier import.")] = False,
) -> None:
    """Import your own model (a Keras or SavedModel model, a torch.export program or an
    nn.Module factory, or one of each framework) with its samples: afterwards every command
    that takes --model takes NAME (models live in $DEPLOYBENCH_MODELS, default
    ~/.local/share/deploybench/models)."""
    from deploybench.jobs.importer import ImportRequest
    from deploybench.jobs.importer import import_model as run_import

    request = ImportRequest(name, keras, savedmodel, torch_export, torch_factory, python_path,
                            samples, labels, calibration, tuple(range_ or ()), max_rows,
                            description, replace)
    with console.status(f"checking {name}"):
        spec = run_import(request)
    console.print(f"imported {spec.name} into {spec.folder}: {spec.description}; next: "
                  f"`deploybench export --model {spec.name}`", highlight=False, soft_wrap=True)


@command
def servers() -> None:
    """List the server targets the kit can measure (serving/targets.py, plus any named by
    DEPLOYBENCH_TARGETS): one line each."""
    from deploybench.serving import targets

    for target in targets.targets().values():
        speaks = ", ".join(f"{p.name} at {target.endpoint(p.endpoint).default}"
                           for p in target.protocols)
        what = ("a server the kit does not start: `deploybench load --target "
                f"{target.name} --url URL`" if target.external
                else f"{target.framework_label}, serves {target.artifact_format}")
        console.print(f"{target.name}\t{target.label} ({what}): {speaks}", highlight=False,
                      soft_wrap=True)


@command
def edge(
    out: Annotated[Path, typer.Option(help="Run folder; rows are appended to its results.json.")],
    artifacts: Annotated[Path, typer.Option(help="Export root (`deploybench export --out`).")] = (
        Path("artifacts")
    ),
    model: Annotated[str, typer.Option(
        help="Exported model, or 'all': every model in the export root.")] = "all",
    threads: Annotated[str, typer.Option(help="Thread counts, comma-separated.")] = "1,2",
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per measurement.")] = 1000,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs before them.")] = 50,
    baselines: Annotated[bool, typer.Option(
        help="Also run the in-process baselines (TensorFlow, torch, ONNX Runtime).")] = True,
    repeats: Annotated[int, typer.Option(
        min=1, help="Fresh processes per measurement: their spread is the run-to-run noise "
                    "the answer lines judge differences by.")] = 3,
    variants: Annotated[str | None, typer.Option(
        help="Edge formats to measure, comma-separated (e.g. tflite-int8,executorch-int8; "
             "default: every one the model has).")] = None,
) -> None:
    """Measure every edge artifact of either twin under its runtime (LiteRT with XNNPACK on and
    off, ExecuTorch, ONNX Runtime) beside the in-process baselines: size, load, latency,
    memory, accuracy and mobile readiness."""
    from deploybench.edge.bench import parse_threads, parse_variants
    from deploybench.jobs.stages import edge_stage
    from deploybench.jobs.writer import RunWriter

    counts = parse_threads(threads)
    chosen = parse_variants(variants)
    # checked before the run folder is written; a named model never exported is a failed row
    models = resolve_models(model, artifacts, checked=False)
    edge_stage(RunWriter(out), artifacts, models, counts, runs, warmup, console, baselines,
               repeats, chosen)


SLO_HELP = ("SLO gates, decided on every load step with its 95% interval, e.g. "
            "'p99<=100ms,p50<=20ms,error_rate<=0.1%,wrong_answers==0,throughput>=50rps' "
            "(a scenario file's `slo:` otherwise).")


PROFILE_HELP = ("A tuned profile (`deploybench tune` writes one): each server it names runs "
                "with its knob values instead of .env's.")


def read_profile(path: Path | None):  # noqa: ANN201
    """The --profile file, checked before anything starts (None: no profile)."""
    from deploybench.serving.profile import load_profile

    return load_profile(path) if path is not None else None


def parse_gates(text: str | None, junit: Path | None) -> list:  # noqa: ANN201
    """The gates of --slo (or a scenario's), checked before any work; --junit needs some."""
    from deploybench.slo import parse

    if not text:
        if junit is not None:
            raise UsageError("--junit writes the SLO gates' outcomes: give --slo too")
        return []
    return parse(text)


def servers_at(pairs: list[tuple[str, str]], artifacts: Path | None, port_offset: int | None,
               url: str | None) -> tuple[list[tuple[str, str]], Any, Path, Any]:
    """Where the chosen servers listen and what they serve, for the commands that talk to
    running servers: the running deployment's endpoints and export (unless --port-offset or
    --url say otherwise), else the published ports shifted by --port-offset and `artifacts`;
    --url points the one target at its address. (pairs, endpoints, export root, the
    deployment record as loaded, running or not, or None)."""
    from deploybench.serving import targets
    from deploybench.serving.manager import Deployment

    deployment = Deployment.load() if port_offset is None and url is None else None
    if deployment is not None and deployment.up():
        endpoints, root = deployment.endpoints_obj(), artifacts or Path(deployment.root)
    else:
        endpoints = targets.loopback_endpoints(port_offset or 0)
        root = artifacts or Path("artifacts")
    if url is not None:
        pairs, endpoints = targets.at_url(pairs, url, endpoints)
    return pairs, endpoints, root, deployment


@command
def load(
    out: Annotated[Path, typer.Option(help="Run folder: results.json and locust's files.")],
    target: Annotated[str, typer.Option(
        help="A server (`deploybench servers` lists them), or all.")] = "all",
    protocol: Annotated[str | None, typer.Option(
        help="Protocols, comma-separated, e.g. rest, grpc, npy, v2-binary (default: every "
             "protocol each server speaks).")] = None,
    scenario: Annotated[str, typer.Option(
        help="sweep (closed loop), rate (open-loop SLO search), or a JSON/YAML file.")] = "sweep",
    users: Annotated[str | None, typer.Option(
        help="Sweep levels, comma-separated users, e.g. 1,4,16.")] = None,
    rates: Annotated[str | None, typer.Option(
        help="Open loop: fixed rates (requests/s) instead of the search, e.g. 50,100.")] = None,
    step_seconds: Annotated[float | None, typer.Option(help="Measured seconds per step.")] = None,
    warmup_seconds: Annotated[float | None, typer.Option(
        help="Seconds per step left out of every figure.")] = None,
    rate_bound_ms: Annotated[float | None, typer.Option(
        help="Open loop: the p99 bound a rate must meet (default 100).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Golden rows per request.")] = None,
    artifacts: Annotated[Path | None, typer.Option(
        help="Export root (default: what `deploybench serve` serves, else artifacts).")] = None,
    model: Annotated[str, typer.Option(
        help="Model to load-test, or 'all': every model being served (without a running "
             "`deploybench serve`: every model in the export root).")] = "all",
    port_offset: Annotated[int | None, typer.Option(
        help="Servers on the published ports shifted by N (default: the running "
             "deployment's endpoints).")] = None,
    url: Annotated[str | None, typer.Option(
        help="Where --target listens when the kit did not start it (e.g. --target oip): "
             "http://host:port for its REST protocols, host:port for gRPC.")] = None,
    check: Annotated[bool, typer.Option(
        "--check/--no-check",
        help="Check every answer against the exported golden outputs; --no-check measures a "
             "model the kit did not export (random inputs of the shape its server declares, "
             "Open Inference Protocol servers only).")] = True,
    workers: Annotated[int, typer.Option(
        min=0, help="Distributed locust: a master and N workers in docker-compose.yml's "
                    "loadtest profile, against servers `deploybench serve --mode docker` "
                    "runs (0: one local locust process).")] = 0,
    early_stop: Annotated[bool | None, typer.Option(
        "--early-stop/--no-early-stop",
        help="Open loop: end each step once its p99's 95% interval lies wholly under the "
             "bound (pass, on at least 662 requests) or over it (fail); at most "
             "max_step_seconds (60), then inconclusive.")] = None,
    slo_gates: Annotated[str | None, typer.Option(
        "--slo", help=SLO_HELP)] = None,
    junit: Annotated[Path | None, typer.Option(
        help="Write the SLO gates' outcomes as JUnit XML here.")] = None,
    repeat: Annotated[int, typer.Option(
        min=1, help="Run the whole load N times; each step's spread across the repeats is "
                    "recorded, and a spread over 20% of its median marks it noisy.")] = 1,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate/--no-calibrate",
        help="First measure the load generator's own time per request against a trivial "
             "local endpoint (about 5 s; recorded as kind loadgen-calibration).")] = True,
    profile: Annotated[Path | None, typer.Option(
        help="A tuned profile: check that the running servers it names run with its values "
             "(`deploybench serve --profile`), and record it.")] = None,
) -> None:
    """Load-test the servers with locust (one headless process per step), answers checked.
    Exit 0, or with --slo: 5 when a gate failed, 6 when one was inconclusive."""
    from deploybench.jobs.gates import judge
    from deploybench.jobs.stages import load_stage
    from deploybench.jobs.writer import RunWriter
    from deploybench.loadtest.runner import LoadPlan, check_reachable, check_signatures
    from deploybench.loadtest.scenarios import load_scenario
    from deploybench.serving import targets
    from deploybench.serving.profile import check_running
    from deploybench.slo import exit_error

    chosen = load_scenario(
        scenario,
        levels=parse_list(users, int) if users else (parse_list(rates, float) if rates else None),
        step_seconds=step_seconds, warmup_seconds=warmup_seconds, rate_bound_ms=rate_bound_ms,
        batch_size=batch_size, slo=slo_gates, early_stop=early_stop,
    )
    gates = parse_gates(chosen.slo, junit)
    if users and chosen.kind != "closed" or rates and chosen.kind != "open":
        raise DeploybenchError("--users is for a closed-loop sweep, --rates for an open-loop "
                               f"scenario; {chosen.name} is {chosen.kind}")
    pairs, endpoints, root, deployment = servers_at(targets.pairs(target, protocol), artifacts,
                                                    port_offset, url)
    running = deployment is not None and deployment.up()
    tuned = read_profile(profile)
    if tuned is not None:
        if not running:
            raise UsageError(f"--profile {profile}: no servers are running to check against "
                             f"it; start them with `deploybench serve --profile {profile}`")
        check_running(tuned, deployment.configurations, [t for t, _ in pairs])
    mode = deployment.mode if running else "external"
    served = deployment.models if running else None
    if not check and not all(targets.get(t).protocol(p).body.startswith("oip-")
                             for t, p in pairs):
        raise UsageError("--no-check reads the model's signature from the Open Inference "
                         "Protocol's metadata: choose a protocol v2-rest, v2-binary or v2-grpc")
    if not check and model == "all":
        raise UsageError("--no-check needs --model NAME: the model's name on the server")
    if workers:
        in_docker = {s.name for s in deployment.servers if s.mode == "docker"} if (
            deployment is not None) else set()
        outside = sorted({t for t, _ in pairs} - in_docker)
        if outside:
            raise UsageError(f"--workers runs locust in compose's loadtest profile, which "
                             f"reaches servers running in Docker only; not in Docker: "
                             f"{', '.join(outside)} (`deploybench serve --mode docker`)")
    root = root.resolve()
    models = resolve_models(model, root, all_of=served) if check else [model]
    plan = LoadPlan(pairs, models, root, endpoints, chosen, out.resolve(), mode,
                    locust_workers=workers, repeats=repeat, calibrate=calibrate)
    if running:
        plan.observers = deployment.observers()
    check_reachable(plan, skip_unreachable=target == "all")
    check_signatures(plan, check)
    # the run folder is written only once every target was checked
    writer = RunWriter(plan.run_dir)
    if tuned is not None:
        writer.set_environment(profile=tuned.to_dict() | {"source": tuned.source})
    run = load_stage(writer, plan, console)
    measurements = run.measurements
    decisions = (judge(gates, measurements + run.searches, writer, console, junit) if gates
                 else [])
    console.print(f"results: {plan.run_dir / 'results.json'}", highlight=False)
    if run.failed_steps:
        raise DeploybenchError(f"{run.failed_steps} of {len(measurements)} load steps failed "
                               f"(see {plan.run_dir / 'results.json'})")
    gate_error = exit_error(decisions)
    if gate_error:
        raise gate_error


@command
def bad_inputs(
    target: Annotated[str, typer.Option(
        help="A server (`deploybench servers` lists them), or all.")] = "all",
    protocol: Annotated[str | None, typer.Option(
        help="Protocols, comma-separated (default: every protocol each server speaks).")] = None,
    model: Annotated[str, typer.Option(help="An exported model the servers serve.")
                     ] = "digits-mlp",
    artifacts: Annotated[Path | None, typer.Option(
        help="Export root (default: what `deploybench serve` serves, else artifacts).")] = None,
    port_offset: Annotated[int | None, typer.Option(
        help="Servers on the published ports shifted by N (default: the running "
             "deployment's endpoints).")] = None,
    url: Annotated[str | None, typer.Option(
        help="Where --target listens when the kit did not start it: http://host:port for "
             "its REST protocols, host:port for gRPC.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the outcomes here (JSON).")
                   ] = None,
) -> None:
    """Send every server the bad-input matrix (serving/bad_inputs.py) in each protocol it
    speaks, on one connection: each case must be refused (4xx, gRPC INVALID_ARGUMENT) naming
    the problem (or answered as the server's registry entry declares by design), then a good
    request answered correctly. A case known to crash the server (Triton's huge JSON shape) is
    not sent and counts as failed. Exit 1 when one was not."""
    from rich.table import Table

    from deploybench.files import atomic_write_json
    from deploybench.loadtest.runner import reachable_pairs
    from deploybench.serving import bad_inputs as matrix
    from deploybench.serving import targets

    pairs, endpoints, root, _ = servers_at(targets.pairs(target, protocol), artifacts,
                                           port_offset, url)
    # a server that is not running is a line under --target all, not a failure
    pairs, skipped = reachable_pairs(pairs, [model], endpoints, skip_unreachable=target == "all")
    for line in skipped:
        console.print(f"skipped: {line}", highlight=False)
    probes = []
    for name in dict.fromkeys(t for t, _ in pairs):
        chosen = tuple(p for t, p in pairs if t == name)
        with console.status(f"{name}: {len(matrix.CASES)} bad inputs in {', '.join(chosen)}"):
            probes += matrix.probe_target(name, endpoints, root.resolve(), model, chosen)
    header, rows = matrix.table(probes)
    table = Table(*header, title=f"bad inputs, {model}")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if out is not None:
        atomic_write_json(out, {"model": model, "probes": [p.to_dict() for p in probes]})
    failed = [f"{p.target} {p.protocol}: {o.case} ({o.why})" for p in probes
              for o in p.outcomes if not o.ok]
    failed += [f"{p.target} {p.protocol}: good request afterwards: {p.good_answer}"
               for p in probes if p.good_answer != "correct"]
    if failed:
        raise DeploybenchError(f"{len(failed)} bad-input check(s) failed: {'; '.join(failed)}")


@command
def run(
    model: Annotated[str, typer.Option(
        help="Model from the zoo or imported (`deploybench models` lists both), or 'all': "
             "both quick digits models (the others by name).")] = "digits-cnn",
    artifacts: Annotated[Path, typer.Option(help="Export root.")] = Path("artifacts"),
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<timestamp>).")
                   ] = None,
    mode: Annotated[str | None, typer.Option(
        help="docker or native (default: docker when a Docker engine answers).")] = None,
    servers: Annotated[str, typer.Option(
        help="Comma-separated servers (`deploybench servers` lists them), all, or main: TF "
             "Serving, TorchServe, KServe-TensorFlow and KServe-PyTorch.")] = "main",
    users: Annotated[str, typer.Option(help="Closed-loop sweep levels.")] = "1,4",
    step_seconds: Annotated[float, typer.Option(help="Measured seconds per load step.")] = 2.0,
    warmup_seconds: Annotated[float, typer.Option(help="Warm-up seconds per step.")] = 0.5,
    rate_search: Annotated[bool, typer.Option(
        help="Also search the highest open-loop rate under the p99 bound.")] = True,
    all_protocols: Annotated[bool, typer.Option(
        help="Every protocol of every server in the sweep and the rate search (default: each "
             "server's JSON and binary protocol in the sweep, its binary one in the rate "
             "search).")] = False,
    rate_bound_ms: Annotated[float, typer.Option(help="The p99 bound (ms).")] = 100.0,
    edge_threads: Annotated[str, typer.Option(help="Edge thread counts.")] = "1",
    edge_runs: Annotated[int, typer.Option(min=1, help="Timed runs per edge measurement.")] = 300,
    edge_repeats: Annotated[int, typer.Option(
        min=1, help="Fresh processes per edge measurement (2: the run-to-run noise).")] = 1,
    edge_variants: Annotated[str | None, typer.Option(
        help="Edge formats to measure, comma-separated (default: every one).")] = None,
    export: Annotated[bool, typer.Option(help="Export first (else reuse the export root).")
                      ] = True,
    port_offset: Annotated[int, typer.Option(help="Shift every published port by N.")] = 0,
    slo_gates: Annotated[str | None, typer.Option("--slo", help=SLO_HELP)] = None,
    junit: Annotated[Path | None, typer.Option(
        help="Write the SLO gates' outcomes as JUnit XML here.")] = None,
    profile: Annotated[Path | None, typer.Option(help=PROFILE_HELP)] = None,
) -> None:
    """The main job: export -> serve -> load -> edge -> report, in one run folder. Exit 0, or
    with --slo: 5 when a gate failed, 6 when one was inconclusive (after the report)."""
    from deploybench.jobs.run import RunOptions
    from deploybench.jobs.run import run as run_pipeline
    from deploybench.serving.targets import loopback_endpoints, parse_targets
    from deploybench.zoo import all_specs, get_spec

    chosen = parse_targets(servers)
    quick = [name for name in all_specs() if name.startswith("digits-")]
    specs = [get_spec(name) for name in resolve_models(model, all_of=quick)]
    # every setting is checked here, before a minute of export and serving, not at its stage
    from deploybench.edge.bench import parse_threads, parse_variants
    from deploybench.loadtest.scenarios import load_scenario

    if mode not in (None, "docker", "native"):
        raise UsageError(f"unknown mode {mode!r}: docker or native")
    gates = parse_gates(slo_gates, junit)
    levels = tuple(parse_list(users, int))
    load_scenario("sweep", levels=levels, step_seconds=step_seconds,
                  warmup_seconds=warmup_seconds)
    if rate_search:
        load_scenario("rate", step_seconds=step_seconds, warmup_seconds=warmup_seconds,
                      rate_bound_ms=rate_bound_ms)
    options = RunOptions(
        specs=specs, artifacts=artifacts, run_dir=out, mode=mode, servers=chosen,
        users=levels, step_seconds=step_seconds,
        warmup_seconds=warmup_seconds, rate_search=rate_search, rate_bound_ms=rate_bound_ms,
        edge_threads=tuple(parse_threads(edge_threads)), edge_runs=edge_runs,
        edge_repeats=edge_repeats, edge_variants=parse_variants(edge_variants), export=export,
        endpoints=loopback_endpoints(port_offset), all_protocols=all_protocols,
        gates=gates, junit=junit, profile=read_profile(profile),
    )
    run_pipeline(options, console)


@command
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder holding results.json.")],
) -> None:
    """Rebuild report.html and report.md from a run's results.json alone."""
    from deploybench.report import write_reports

    html, markdown = write_reports(run_dir)
    console.print(f"report: {html} and {markdown}", highlight=False)


@command
def compare(
    base: Annotated[Path, typer.Argument(help="The run folder to compare against.")],
    new: Annotated[Path, typer.Argument(help="The run folder under test.")],
    fail_on: Annotated[str, typer.Option(
        help="Gates, METRIC:CHANGE comma-separated, the sign pointing the worse way: p50, "
             "p90, p99, throughput, size in percent, accuracy in points.")
                       ] = "p99:+10%,throughput:-5%,accuracy:-1pt",
    junit: Annotated[Path | None, typer.Option(
        help="Write one JUnit test case per gated figure here.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Where compare.md, compare.html and compare.json go (default: NEW).")] = None,
) -> None:
    """Compare two runs figure by figure, matched by what was measured: both values, the
    change, and whether it is significant by the 95% intervals; what changed in the
    environment first. Exit 0: no significant regression beyond the gates; 5: a regression;
    6: a gated change the intervals cannot decide; 2: a folder that cannot be read."""
    from deploybench import compare as comparing

    gates = comparing.parse_gates(fail_on)
    comparison = comparing.compare_runs(base, new, gates)
    paths = comparing.write_comparison(comparison, out or new)
    if junit is not None:
        comparing.write_junit(comparison, junit)
    gated = [c for c in comparison.changes if c.decision]
    console.print(f"{len(comparison.changes)} figures in both runs "
                  f"({len(comparison.only_base)} in the base only, {len(comparison.only_new)} "
                  f"in the new only), {len(gated)} gated; environment changes: "
                  f"{len(comparison.environment)}", highlight=False)
    for change in comparison.decided("regression") + comparison.decided("inconclusive"):
        console.print(f"{change.decision}: {change.label} {change.metric} "
                      f"{change.base:.4g} -> {change.new:.4g} ({change.why})", highlight=False)
    console.print(f"comparison: {paths[1]} and {paths[0]}", highlight=False)
    error = comparison.exit_error()
    if error is not None:
        raise error


@command
def bench(
    out: Annotated[Path, typer.Option(help="Run folder for results.json.")],
    model: Annotated[str, typer.Option(help="Exported model to benchmark.")] = "mobilenet-v2",
    artifacts: Annotated[Path, typer.Option(help="Export root.")] = Path("artifacts"),
    server_cpus: Annotated[str, typer.Option(help="CPUs for the servers (taskset list).")] = "1",
    loadgen_cpus: Annotated[str, typer.Option(help="CPUs for locust (taskset list).")] = "0",
    step_seconds: Annotated[float, typer.Option(help="Measured seconds per rate step.")] = 8.0,
    min_requests: Annotated[int, typer.Option(
        min=0, help="A rate step passes on at least this many requests, its p99's interval "
                    "under the bound (400 at least).")] = 400,
    bound_ms: Annotated[float, typer.Option(help="The p99 bound (ms).")] = 100.0,
    max_batch_size: Annotated[int, typer.Option(help="Batching bound, both servers.")] = 4,
    batch_timeout_ms: Annotated[int, typer.Option(help="Batching wait, both servers.")] = 5,
    port_offset: Annotated[int, typer.Option(help="Shift every published port by N.")] = 0,
    target: Annotated[str, typer.Option(
        help="Comma-separated servers (`deploybench servers` lists them), or all.")] = "all",
    protocol: Annotated[str | None, typer.Option(
        help="Protocols, comma-separated: of each chosen server, those it speaks (e.g. "
             "npy,v2-binary; default: every one).")
    ] = None,
    profile: Annotated[Path | None, typer.Option(
        help="A tuned profile: each server it names measured at its tuned configuration, in "
             "the batching pass its profile says.")] = None,
) -> None:
    """Serving efficiency: each server's best rate under the p99 bound (batching off and on,
    or each at its tuned configuration with --profile) against the in-process ceiling of what
    it serves, on the same cores."""
    from deploybench.jobs.bench import BenchOptions, run_bench
    from deploybench.serving import targets

    pairs = tuple(targets.pairs(target, protocol))
    run_bench(BenchOptions(model, artifacts, out, server_cpus, loadgen_cpus,
                           step_seconds=step_seconds, min_requests=min_requests,
                           bound_ms=bound_ms,
                           max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms,
                           port_offset=port_offset, pairs=pairs,
                           profile=read_profile(profile)), console)


@command
def tune(
    model: Annotated[str, typer.Option(help="Exported model to tune the servers for.")],
    out: Annotated[Path, typer.Option(help="Run folder: results.json, report, profile.json.")],
    artifacts: Annotated[Path, typer.Option(help="Export root.")] = Path("artifacts"),
    servers: Annotated[str, typer.Option(
        help="Comma-separated servers (`deploybench servers` lists them), or all.")] = "all",
    slo_bound: Annotated[str, typer.Option(
        "--slo", help="The p99 bound every configuration must meet, e.g. p99<=100ms.")
    ] = "p99<=100ms",
    budget_minutes: Annotated[float, typer.Option(
        min=0.1, help="Minutes for the whole search, split across the servers.")] = 10.0,
    server_cpus: Annotated[str, typer.Option(help="CPUs for the servers (taskset list).")] = "1",
    loadgen_cpus: Annotated[str, typer.Option(help="CPUs for locust (taskset list).")] = "0",
    step_seconds: Annotated[float, typer.Option(
        min=0.5, help="Measured seconds per rate step.")] = 4.0,
    warmup_seconds: Annotated[float, typer.Option(min=0, help="Warm-up per step.")] = 1.0,
    profile: Annotated[Path | None, typer.Option(
        help="Where to write the tuned profile (default OUT/profile.json).")] = None,
    port_offset: Annotated[int, typer.Option(help="Shift every published port by N.")] = 0,
) -> None:
    """Each server's best configuration under the p99 bound: a coordinate search over the
    knobs its registry entry declares, every probe recorded; writes a profile that serve, run
    and bench run the servers with (--profile), and that load checks the running ones
    against."""
    from deploybench.jobs.tune import TuneOptions, p99_bound, run_tune
    from deploybench.serving.targets import parse_targets

    chosen = parse_targets(servers)
    bound = p99_bound(slo_bound)
    run_tune(TuneOptions(model, artifacts, out, chosen, bound_ms=bound,
                         budget_minutes=budget_minutes, server_cpus=server_cpus,
                         loadgen_cpus=loadgen_cpus, step_seconds=step_seconds,
                         warmup_seconds=warmup_seconds, port_offset=port_offset,
                         profile=profile), console)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
