"""deploybench.settings: .env parsed by python-dotenv, bad lines and bad numbers named."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploybench.errors import DeploybenchError, UsageError
from deploybench.settings import ENV_FILE, ServerSettings, load_settings, read_env_file

KEYS = ("SERVER_CPUS", "SERVER_MEMORY", "SERVER_INTRA_OP_THREADS", "SERVER_INTER_OP_THREADS",
        "SERVER_REST_THREADS", "SERVER_WORKERS", "BATCHING", "MAX_BATCH_SIZE", "BATCH_TIMEOUT_MS",
        "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The file alone decides, unless a test sets the environment itself."""
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def test_quotes_comments_and_export_are_read_as_python_dotenv_reads_them(tmp_path: Path) -> None:
    path = env_file(tmp_path, "\n".join([
        "# a comment line",
        "",
        "SERVER_CPUS=1.5",
        "export SERVER_MEMORY=3g",
        'QUOTED="two words # not a comment"',
        "SINGLE='kept as is'",
        "INLINE=value # a trailing comment",
        "SPACED = 7",
        "EMPTY=",
        "NO_VALUE",
    ]) + "\n")
    assert read_env_file(path) == {
        "SERVER_CPUS": "1.5", "SERVER_MEMORY": "3g", "QUOTED": "two words # not a comment",
        "SINGLE": "kept as is", "INLINE": "value", "SPACED": "7", "EMPTY": "",
    }


def test_values_are_literal_without_interpolation(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME_DIR", "/home/x")
    path = env_file(tmp_path, "A=${HOME_DIR}/a\n")
    assert read_env_file(path) == {"A": "${HOME_DIR}/a"}


def test_missing_file_has_no_values(tmp_path: Path) -> None:
    assert read_env_file(tmp_path / "absent.env") == {}
    settings = load_settings(tmp_path / "absent.env")
    assert (settings.cpus, settings.memory, settings.batching) == (2.0, "4g", False)


def test_a_malformed_line_is_one_error_naming_file_line_and_text(tmp_path: Path) -> None:
    path = env_file(tmp_path, "SERVER_CPUS=2\n# fine\nthis is not a setting\nBATCHING=true\n")
    with pytest.raises(UsageError) as info:
        read_env_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "line 3" in message
    assert "'this is not a setting'" in message
    with pytest.raises(UsageError, match="line 3"):
        load_settings(path)


def test_a_usage_error_is_what_the_cli_prints_as_one_line() -> None:
    assert issubclass(UsageError, DeploybenchError)


@pytest.mark.parametrize(("line", "key"), [
    ("SERVER_CPUS=abc", "SERVER_CPUS"),
    ("MAX_BATCH_SIZE=8.5", "MAX_BATCH_SIZE"),
    ("SERVER_REST_THREADS=", "SERVER_REST_THREADS"),
])
def test_a_value_that_is_not_a_number_names_its_key(tmp_path: Path, line: str, key: str) -> None:
    path = env_file(tmp_path, line + "\n")
    with pytest.raises(UsageError) as info:
        load_settings(path)
    message = str(info.value)
    assert key in message and str(path) in message and "\n" not in message


def test_a_bad_number_from_the_environment_says_so(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_CPUS", "two")
    with pytest.raises(UsageError, match="SERVER_CPUS='two' \\(from the environment\\)"):
        load_settings(env_file(tmp_path, "SERVER_CPUS=2\n"))


def test_the_environment_overrides_the_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = env_file(tmp_path, "SERVER_CPUS=2\nSERVER_MEMORY=4g\nMAX_BATCH_SIZE=8\n")
    monkeypatch.setenv("SERVER_CPUS", "0.5")
    monkeypatch.setenv("MAX_BATCH_SIZE", "16")
    settings = load_settings(path)
    assert (settings.cpus, settings.max_batch_size, settings.memory) == (0.5, 16, "4g")


def test_file_values_and_defaults_become_typed_settings(tmp_path: Path) -> None:
    path = env_file(tmp_path, 'export BATCHING="on"\nBATCH_TIMEOUT_MS=7 # ms\n')
    settings = load_settings(path)
    assert isinstance(settings, ServerSettings)
    assert settings.batching is True and settings.batch_timeout_ms == 7
    assert (settings.cpus, settings.intra_op_threads, settings.rest_threads) == (2.0, 2, 32)
    assert settings.process_env() == {}


def test_explicit_overrides_win_over_file_and_environment(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "16")
    settings = load_settings(env_file(tmp_path, "MAX_BATCH_SIZE=8\n"), max_batch_size=4)
    assert settings.max_batch_size == 4


def test_the_repository_env_file_parses() -> None:
    values = read_env_file(ENV_FILE)
    assert values["SERVER_CPUS"] and values["BATCHING"] == "false"
    assert values["MALLOC_MMAP_THRESHOLD_"] == "33554432"
