"""`deploybench images` (`make images`): build, offline and idempotently, every image of the
compose stack that can be built here, tagged as docker-compose.yml names them.

Where no image registry is reachable, the official base images cannot be pulled, so the kit
makes a stand-in for them from what the host can reach: a Debian root from debootstrap (Debian's
packages), imported into the engine, and one virtual environment installed from a wheelhouse
the host fills with `pip download` at the versions it runs natively (docker/offline/Dockerfile).
Triton needs numpy<2, so its image has a stand-in of its own: the same Debian root with the
Triton environment installed from a second wheelhouse, at the versions of the host's Triton
environment (docker/offline/triton.Dockerfile). The kit's own Dockerfiles are then built by
compose on those stand-ins (their BASE_IMAGE build argument); their defaults stay the official
images. TF Serving's image cannot be built here: no TF Serving binary is packaged for Debian or
PyPI.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploybench.errors import DeploybenchError
from deploybench.serving import engine, manager, native, processes
from deploybench.settings import REPO_ROOT

CACHE = REPO_ROOT / ".cache" / "images"
DEBIAN_IMAGE = "deploybench-offline/debian:bookworm"
OFFLINE_BASE = "deploybench-offline/python:3.11"
TRITON_BASE = "deploybench-offline/triton:3.11"
# debootstrap --include: the official images' interpreters (Python 3.11 as python:3.11-slim,
# with its shared libpython, which Triton's Python backend stub loads; TorchServe's frontend
# needs Java)
DEBIAN_PACKAGES = ("python3.11", "libpython3.11", "python3-venv", "default-jre-headless")
# What the three official base images carry, and what the kit's Dockerfiles install on them;
# versions are pinned to the host's own (constraints from its `pip freeze`)
WHEELS = (
    "torch==2.13.0", "tensorflow==2.21.*", "kserve==0.21.*", "torchserve==0.12.0",
    "pyyaml>=6", "locust==2.47.*", "tensorflow-serving-api==2.21.*", "hdrhistogram>=0.10",
    "python-dotenv>=1.0", "orjson>=3.9,<4", "numpy>=1.26", "grpcio>=1.62",
    "onnxruntime>=1.22,<2",
    # the kit itself is built from its sources in each image: its build backend
    "setuptools>=68", "wheel",
)
TRITON_REQUIREMENTS = REPO_ROOT / "requirements-triton.txt"
# compose services built by the kit: the environment variable its BASE_IMAGE build argument is
# read from (docker-compose.yml), and the offline stand-in passed in it
BUILT = {"torchserve": ("TORCHSERVE_BASE_IMAGE", OFFLINE_BASE),
         "kserve-tensorflow": ("KSERVE_BASE_IMAGE", OFFLINE_BASE),
         "locust-master": ("LOCUST_BASE_IMAGE", OFFLINE_BASE),
         "triton-tensorflow": ("TRITON_BASE_IMAGE", TRITON_BASE)}
LABEL = "org.deploybench.inputs"


@dataclass(frozen=True)
class StandIn:
    """An offline stand-in for an official base image: the Debian root and one environment
    installed from a wheelhouse the host fills at the versions `python`'s environment runs."""

    label: str  # what `make images` calls it
    image: str
    dockerfile: Path
    wheelhouse: Path
    constraints: Path  # that environment's `pip freeze`, kept out of the build context
    requirements: tuple[str, ...]
    python: Path  # the host environment whose versions are pinned (none there: unpinned)


def requirement_lines(path: Path) -> tuple[str, ...]:
    """A requirements file's requirements, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line)


def stand_ins() -> tuple[StandIn, ...]:
    offline = REPO_ROOT / "docker" / "offline"
    triton_python = Path(os.environ.get(native.TRITON_PYTHON_ENV) or native.TRITON_PYTHON)
    return (
        StandIn("offline base", OFFLINE_BASE, offline / "Dockerfile", CACHE / "wheelhouse",
                CACHE / "constraints.txt", WHEELS, Path(sys.executable)),
        # Triton's numpy<2 environment, and the kit's build backend
        StandIn("Triton offline base", TRITON_BASE, offline / "triton.Dockerfile",
                CACHE / "wheelhouse-triton", CACHE / "constraints-triton.txt",
                (*requirement_lines(TRITON_REQUIREMENTS), "setuptools>=68", "wheel"),
                triton_python),
    )


@dataclass
class BuiltImage:
    service: str
    image: str
    size_bytes: int | None  # None: not built
    note: str = ""


def build_images(log: Callable[[str], None] = print, log_path: Path | None = None,
                 ) -> list[BuiltImage]:
    """Build what is missing or stale; returns one row per compose service image."""
    import docker

    log_path = log_path or CACHE / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # an engine that answers, or a dockerd started for the build (root) and stopped after it:
    # the images stay in its storage
    started = engine.ensure_engine(CACHE / "dockerd.log")
    client = docker.from_env(timeout=600)
    try:
        with log_path.open("a") as build_log:
            _step(log, "Debian base", lambda: _debian_base(client, build_log))
            for base in stand_ins():
                _step(log, f"{base.label}'s wheelhouse",
                      lambda base=base: _wheelhouse(base, build_log))
                _step(log, base.label, lambda base=base: _stand_in(client, base, build_log))
            environment = dict(BUILT.values())
            _step(log, "compose build", lambda: _compose_build(environment, build_log))
        return _rows(client)
    except subprocess.CalledProcessError as error:
        raise DeploybenchError(f"{' '.join(map(str, error.cmd[:3]))} failed ({error.returncode}); "
                               f"see {log_path}") from None
    finally:
        client.close()
        if started is not None:
            processes.stop(started, grace_seconds=30)


def _step(log: Callable[[str], None], name: str, work: Callable[[], str]) -> None:
    started = time.monotonic()
    said = work()
    log(f"{name}: {said} ({time.monotonic() - started:.0f} s)")


def _debian_inputs() -> str:
    return hashlib.sha256(",".join(DEBIAN_PACKAGES).encode()).hexdigest()[:16]


def _debian_base(client, build_log) -> str:  # noqa: ANN001
    """debootstrap's Debian bookworm with the packages, imported as DEBIAN_IMAGE. The root's
    tarball is kept in the cache: an engine that lost its images imports it again in seconds."""
    inputs = _debian_inputs()
    if _has_image(client, DEBIAN_IMAGE, inputs):
        return f"{DEBIAN_IMAGE} is up to date"
    tarball = CACHE / f"debian-bookworm-{inputs}.tar"  # named by its packages
    if not tarball.is_file():
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            raise DeploybenchError("building the Debian base needs debootstrap, as root: "
                                   "`sudo make images` (Debian's debootstrap package)")
        root = CACHE / "debian-root"
        shutil.rmtree(root, ignore_errors=True)
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                   "bookworm", str(root)]
        if os.environ.get("DEBIAN_MIRROR"):  # a local mirror; else debootstrap's default
            command.append(os.environ["DEBIAN_MIRROR"])
        _run(command, build_log)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        partial = tarball.with_suffix(".tar.partial")
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], build_log)
        partial.rename(tarball)
        shutil.rmtree(root)
        for stale in CACHE.glob("debian-bookworm*.tar"):  # roots with other packages
            if stale != tarball:
                stale.unlink()
    repository, tag = DEBIAN_IMAGE.rsplit(":", 1)
    client.api.import_image_from_file(str(tarball), repository=repository, tag=tag,
                                      changes=[f"LABEL {LABEL}={inputs}"])
    return f"{DEBIAN_IMAGE} imported from {tarball.name}"


def _frozen(python: Path) -> str:
    """The versions an environment runs (`pip freeze`), less the kit itself; "" if none."""
    if not python.exists():
        return ""
    frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    # the kit installed from its sources (`deploybench @ file://...`) is built in each image
    return "".join(line + "\n" for line in frozen.splitlines()
                   if not line.startswith(("#", "deploybench")))


def _wheelhouse(base: StandIn, build_log) -> str:  # noqa: ANN001
    """The wheels of the stand-in's requirements at the host environment's versions,
    downloaded by the host's pip (its index), plus requirements.txt naming them for the image."""
    folder = base.wheelhouse
    folder.mkdir(parents=True, exist_ok=True)
    frozen = _frozen(base.python)
    wanted = "\n".join(base.requirements) + "\n"
    requirements = folder / "requirements.txt"
    # what was downloaded for these pins is still there: nothing to ask the index
    if not (base.constraints.is_file() and base.constraints.read_text() == frozen
            and requirements.is_file() and requirements.read_text() == wanted):
        requirements.unlink(missing_ok=True)
        base.constraints.write_text(frozen)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder),
              "--only-binary=:all:", "-c", str(base.constraints), *base.requirements],
             build_log)
        requirements.write_text(wanted)
    shutil.copy(base.dockerfile, folder / "Dockerfile")
    wheels = sorted(folder.glob("*.whl"))
    # a wheel a new pin replaced stays in the folder; --no-index picks by the requirements
    size = sum(w.stat().st_size for w in wheels) / 2**20
    versions = (f"the versions of {base.python.parent.parent.name}" if frozen
                else f"no {base.python.parent.parent.name} here: the newest allowed")
    return f"{len(wheels)} wheels, {size:.0f} MiB, {versions}"


def _stand_in(client, base: StandIn, build_log) -> str:  # noqa: ANN001
    """The stand-in built from its wheelhouse on DEBIAN_IMAGE, unless it is there with the
    same inputs (wheels, Dockerfile, requirements, Debian root)."""
    wheels = base.wheelhouse
    digest = hashlib.sha256()
    for path in sorted(wheels.iterdir()):
        digest.update(path.name.encode())
    digest.update((wheels / "Dockerfile").read_bytes())
    digest.update((wheels / "requirements.txt").read_bytes())
    digest.update(_debian_inputs().encode())
    inputs = digest.hexdigest()[:16]
    if _has_image(client, base.image, inputs):
        return f"{base.image} is up to date"
    errors = []
    for chunk in client.api.build(path=str(wheels), tag=base.image, rm=True, decode=True,
                                  buildargs={"DEBIAN_IMAGE": DEBIAN_IMAGE},
                                  labels={LABEL: inputs}):
        build_log.write(chunk.get("stream", "") or f"{chunk}\n")
        if "error" in chunk:
            errors.append(chunk["error"].strip())
    build_log.flush()
    if errors:
        raise DeploybenchError(f"building {base.image} failed: {errors[-1][-300:]}")
    return f"{base.image} built"


def _compose_build(environment: dict[str, str], build_log) -> str:  # noqa: ANN001
    env = {**os.environ, **environment}
    command = [*manager.compose_command(), "-f", str(manager.COMPOSE_FILE), "-p",
               manager.COMPOSE_PROJECT, "--profile", "loadtest", "build", *BUILT]
    _run(command, build_log, env=env)
    return f"built {', '.join(BUILT)} on {', '.join(sorted(set(environment.values())))}"


def _rows(client) -> list[BuiltImage]:  # noqa: ANN001
    images = manager.compose_images(REPO_ROOT, ["tfserving", *BUILT], profile="loadtest")
    rows = []
    for service, (image, _) in images.items():
        found = _image(client, image)
        if found is not None:
            rows.append(BuiltImage(service, image, found.attrs["Size"]))
        elif service == "tfserving":
            note = ("cannot be built here: no TF Serving binary is packaged for Debian or PyPI; "
                    f"`docker pull {image}` where a registry is reachable. The stack runs "
                    "without it")
            rows.append(BuiltImage(service, image, None, note))
        else:
            rows.append(BuiltImage(service, image, None, "not built"))
    return rows


def _image(client, name: str):  # noqa: ANN001, ANN202
    from docker.errors import ImageNotFound

    try:
        return client.images.get(name)
    except ImageNotFound:
        return None


def _has_image(client, name: str, inputs: str | None = None) -> bool:  # noqa: ANN001
    found = _image(client, name)
    if found is None:
        return False
    return inputs is None or (found.labels or {}).get(LABEL) == inputs


def _run(command: list[str], build_log, env: dict[str, str] | None = None) -> None:  # noqa: ANN001
    build_log.write(f"$ {' '.join(command)}\n")
    build_log.flush()
    subprocess.run(command, stdout=build_log, stderr=subprocess.STDOUT, check=True, env=env,
                   cwd=REPO_ROOT)
