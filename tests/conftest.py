"""Shared fixtures: one real export of the digits models per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Two test workers share two cores: torch's OpenMP threads spin while they wait for work and
# burn the core the other worker needs. Two digits exports side by side took 113-127 s and
# 190-213 CPU-s, and 97 s and 158 CPU-s with passive waiting (read when torch loads, so set
# before it; servers and CLIs the tests start inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# no test sees the user's own imported models (tests that import set a folder of their own)
os.environ["DEPLOYBENCH_MODELS"] = str(Path(tempfile.gettempdir())
                                       / f"deploybench-tests-no-user-models-{os.getpid()}")

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "test-artifacts"


def invoke(*args: str):  # noqa: ANN201
    """Run the deploybench CLI in-process and return click's result."""
    from deploybench.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


DIGITS_MODELS = ("digits-mlp", "digits-cnn")


@pytest.fixture(scope="session")
def export_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both digits models exported for real, once per session (the larger zoo models have
    tests of their own). With parallel workers (`-n`), the first to need it exports into the
    folder they share while the others wait; tests copy it before changing anything."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, done = shared / "export", shared / "export.done"
    with FileLock(str(shared / "export.lock")):
        if not done.exists():
            for model in DIGITS_MODELS:
                result = invoke("export", "--model", model, "--out", str(root))
                assert result.exit_code == 0, result.output
            done.touch()
    return root


@pytest.fixture(scope="session")
def bert_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """text-bert exported for real, once per session (shared by parallel workers like
    export_root): the transformer twin, its corpus trained on here."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, done = shared / "bert-export", shared / "bert-export.done"
    with FileLock(str(shared / "bert-export.lock")):
        if not done.exists():
            result = invoke("export", "--model", "text-bert", "--out", str(root))
            assert result.exit_code == 0, result.output
            done.touch()
    return root


USER_MODELS = ("mine", "net")


@pytest.fixture(scope="session")
def user_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(export root, user model folder): a user's Keras model with two inputs and a
    torch.export program (tests/user_models.py), imported as `mine` and `net` and exported for
    real, once per session (shared by parallel workers like export_root). Commands that look a
    user model up by name need DEPLOYBENCH_MODELS set to the folder."""
    from filelock import FileLock

    from tests import user_models

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, home, files = shared / "user-export", shared / "user-home", shared / "user-files"
    done = shared / "user-export.done"
    with FileLock(str(shared / "user-export.lock")):
        if not done.exists():
            files.mkdir(exist_ok=True)
            keras_file, samples, labels = user_models.keras_two_inputs(files)
            program, images = user_models.torch_export_program(files)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("DEPLOYBENCH_MODELS", str(home))
                for args in (("mine", "--keras", str(keras_file), "--samples", str(samples),
                              "--labels", str(labels), "--range", "ids=0:50"),
                             ("net", "--torch-export", str(program), "--samples", str(images))):
                    result = invoke("import", *args)
                    assert result.exit_code == 0, result.output
                for model in USER_MODELS:
                    result = invoke("export", "--model", model, "--out", str(root))
                    assert result.exit_code == 0, result.output
            done.touch()
    return root, home


@pytest.fixture
def export_copy(export_root: Path, tmp_path: Path) -> Path:
    """A private copy of the session's export, to break or export into on purpose."""
    root = tmp_path / "export"
    shutil.copytree(export_root, root, symlinks=True)
    return root


@pytest.fixture(scope="session")
def test_artifacts() -> Path:
    """Where tests keep screenshots and logs worth looking at after a run."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR


# The longest modules first, so that parallel workers (`-n`) start with them and end together;
# mobilenet-v2's needs no digits export, so one worker exports that while another exports these;
# the Docker tests build their images first (test_docker.py), which needs no export either;
# text-bert's export follows mobilenet-v2's (the other order measured 3.5 min slower), and its
# serving tests come well after it: right after, they waited 3 min on the export's lock, a
# core idle while the export trains its reference on one thread.
LONGEST_FIRST = ("test_docker.py", "test_mobilenet.py", "test_text_bert.py", "test_triton.py",
                 "test_bench.py", "test_pipeline.py", "test_text_bert_serving.py",
                 "test_edge.py", "test_export.py", "test_reliability.py", "test_kserve.py",
                 "test_tune.py",
                 # the imported models' export (a fixture of both) last among the long ones:
                 # left to the alphabet, it ended one worker a minute after the other
                 "test_user_models_served.py", "test_user_models.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)
