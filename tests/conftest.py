"""Shared fixtures: one real export of the digits models per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "test-artifacts"


def invoke(*args: str):  # noqa: ANN201
    """Run the deploybench CLI in-process and return click's result."""
    from deploybench.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


DIGITS_MODELS = ("digits-mlp", "digits-cnn")


@pytest.fixture(scope="session")
def export_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both digits models exported for real, once per session (the larger zoo models have
    tests of their own)."""
    root = tmp_path_factory.mktemp("export")
    for model in DIGITS_MODELS:
        result = invoke("export", "--model", model, "--out", str(root))
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="session")
def test_artifacts() -> Path:
    """Where tests keep screenshots and logs worth looking at after a run."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR
