"""The `deploybench` command: one sub-command per stage."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from deploybench.errors import DeploybenchError

app = typer.Typer(
    help="Compare how one model deploys through TensorFlow Serving, TorchServe and LiteRT.",
    no_args_is_help=True,
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


def command(func: Callable[..., Any]) -> Callable[..., Any]:
    """A CLI command whose failures are one readable line, with the detail in the log."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return func(*args, **kwargs)
        except DeploybenchError as error:
            logging.getLogger("deploybench").error("%s", error)
            errors.print(f"[red]error:[/red] {error}", soft_wrap=True, highlight=False)
            raise typer.Exit(error.exit_code) from None
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

    return app.command()(wrapper)


def resolve_models(name: str) -> list:  # noqa: ANN201
    from deploybench.zoo import UnknownModelError, all_specs, get_spec

    if name == "all":
        return list(all_specs().values())
    try:
        return [get_spec(name)]
    except UnknownModelError as error:
        raise DeploybenchError(str(error)) from None


@command
def export(
    model: Annotated[str, typer.Option(help="Model name from the zoo, or 'all'.")] = "all",
    out: Annotated[Path, typer.Option(help="Export root folder.")] = Path("artifacts"),
    version: Annotated[int, typer.Option(min=1, help="Model version to write.")] = 1,
) -> None:
    """Export models to SavedModel, TFLite variants, TorchScript and .mar, gated on parity."""
    specs = resolve_models(model)
    from deploybench.export.exporter import export as run_export

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
    model: Annotated[str, typer.Option(help="Model to serve, or 'all' exported.")] = "all",
    servers: Annotated[str, typer.Option(help="Comma-separated servers.")] = "tfserving,torchserve",
    port_offset: Annotated[int, typer.Option(help="Shift every published port by N.")] = 0,
    run_dir: Annotated[Path | None, typer.Option(help="Folder for logs and configs.")] = None,
) -> None:
    """Start the servers; return once each answers a golden sample correctly."""
    from deploybench.serving.clients import TARGETS
    from deploybench.serving.manager import loopback_endpoints
    from deploybench.serving.manager import serve as start

    chosen = tuple(parse_list(servers))
    unknown = set(chosen) - set(TARGETS)
    if unknown:
        raise DeploybenchError(f"unknown server(s) {sorted(unknown)}; known: {', '.join(TARGETS)}")
    models = None if model == "all" else [model]
    deployment = start(artifacts, mode, models, run_dir, loopback_endpoints(port_offset), chosen,
                       log=lambda text: console.print(text, highlight=False))
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
    from deploybench.serving.manager import stop as stop_servers

    stopped = stop_servers()
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing to stop")


@command
def models() -> None:
    """List the models in the zoo."""
    from deploybench.zoo import all_specs

    for spec in all_specs().values():
        console.print(f"{spec.name}\t{spec.description}", highlight=False)


@command
def edge(
    out: Annotated[Path, typer.Option(help="Run folder; rows are appended to its results.json.")],
    artifacts: Annotated[Path, typer.Option(help="Export root (`deploybench export --out`).")] = (
        Path("artifacts")
    ),
    model: Annotated[str, typer.Option(help="Exported model name, or 'all'.")] = "all",
    threads: Annotated[str, typer.Option(help="Thread counts, comma-separated.")] = "1,2",
    runs: Annotated[int, typer.Option(min=1, help="Timed runs per measurement.")] = 1000,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs before them.")] = 50,
    baselines: Annotated[bool, typer.Option(
        help="Also run the SavedModel in TensorFlow and the TorchScript in torch.")] = True,
) -> None:
    """Measure every TFLite variant under LiteRT (XNNPACK on and off) beside in-process
    TensorFlow and torch: size, load, latency, memory, accuracy and mobile readiness."""
    from deploybench.edge.bench import parse_threads, run_edge

    run_edge(artifacts, model, parse_threads(threads), runs, warmup, out, console, baselines)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
