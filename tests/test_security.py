"""Safe defaults that need no server (issue 7): no secret in the repository, locust's web UI on
loopback unless told otherwise, TorchServe's request size limit stated. Checks against a
running server (its sockets, the refused registration API) are in test_reliability.py; the
compose file's ports, read-only mounts and users are in test_compose.py."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from deploybench.loadtest.process import LOCUSTFILE
from deploybench.serving import native
from tests.servers import inet_connections

REPO = Path(__file__).resolve().parent.parent

# Each pattern is split in two so that this file does not match itself.
SECRET_PATTERNS = {
    "private key": "-----BEGIN [A-Z ]*" + "PRIVATE KEY-----",
    "AWS access key id": r"\bAKIA" + r"[0-9A-Z]{16}\b",
    "GitHub token": r"\bgh[pousr]_" + r"[A-Za-z0-9]{36,}|\bgithub_pat_" + r"[A-Za-z0-9_]{22,}",
    "Slack token": r"\bxox[abprs]-" + r"[A-Za-z0-9-]{10,}",
    "Google API key": r"\bAIza" + r"[0-9A-Za-z_-]{35}",
    "OpenAI-style key": r"\bsk-" + r"[A-Za-z0-9]{32,}",
    "Hugging Face token": r"\bhf_" + r"[A-Za-z0-9]{30,}",
    "JSON web token": r"\beyJ[A-Za-z0-9_-]{10,}\." + r"eyJ[A-Za-z0-9_-]{10,}\.",
    "password or key in an assignment": (
        r"(?i)(password|passwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token)"
        r"\b[\"']?\s*[:=]\s*" + r"[\"'][^\"'\s]{6,}[\"']"),
    "credentials in a URL": r"\b[a-z][a-z0-9+.-]*://[^/\s:@\"']+:" + r"[^/\s:@\"']+@",
}
SECRET_FILES = re.compile(r"(^|/)(id_rsa|id_dsa|id_ecdsa|id_ed25519|\.npmrc|\.pypirc|\.netrc|"
                          r"credentials(\.json)?|[^/]*\.(pem|key|p12|pfx|keystore|jks))$")


def repository_files() -> list[str]:
    """What is or would be committed: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if (REPO / name).is_file()]


def test_no_secret_in_the_repository() -> None:
    files = repository_files()
    assert len(files) > 20  # the listing works
    found = []
    patterns = {name: re.compile(pattern) for name, pattern in SECRET_PATTERNS.items()}
    for name in files:
        if SECRET_FILES.search(name):
            found.append(f"{name}: a key or credentials file")
            continue
        data = (REPO / name).read_bytes()
        if b"\0" in data[:8192] or len(data) > 5_000_000:  # binary or data, not source
            continue
        text = data.decode("utf-8", errors="replace")
        for kind, pattern in patterns.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{name}:{line}: {kind}")
    assert not found, "possible secrets:\n" + "\n".join(found)


def test_the_secret_patterns_do_catch_secrets() -> None:
    """The scan is only worth its patterns: each one catches a made-up secret."""
    samples = {
        "private key": "-----BEGIN RSA " + "PRIVATE KEY-----",
        "AWS access key id": "AKIA" + "ABCDEFGHIJKLMNOP",
        "GitHub token": "ghp_" + "a" * 36,
        "Slack token": "xoxb-" + "1234567890-abc",
        "Google API key": "AIza" + "B" * 35,
        "OpenAI-style key": "sk-" + "c" * 40,
        "Hugging Face token": "hf_" + "d" * 34,
        "JSON web token": "eyJ" + "e" * 12 + ".eyJ" + "f" * 12 + ".sig",
        "password or key in an assignment": 'db_password = "' + 'hunter22"',
        "credentials in a URL": "https://user:" + "pass@example.com/x",
    }
    assert set(samples) == set(SECRET_PATTERNS)
    for kind, sample in samples.items():
        assert re.search(SECRET_PATTERNS[kind], sample), kind
    assert not re.search(SECRET_PATTERNS["password or key in an assignment"],
                         'password = os.environ["DB_PASSWORD"]')


def test_torchserve_config_states_its_request_size_limit() -> None:
    config = native.read_properties(native.TORCHSERVE_CONFIG)
    assert int(config["max_request_size"]) == 6_553_500  # TorchServe's default, made explicit
    assert config["enable_model_api"] == "false"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_locust_web_ui_listens_on_loopback_by_default(tmp_path: Path) -> None:
    """`locust -f loadtest/locustfile.py` with no --web-host: the UI is on 127.0.0.1 only
    (locust's own default is every interface)."""
    port = free_port()
    log = (tmp_path / "locust.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--class-picker",
         "--web-port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        listening: list[tuple[str, int]] = []
        while time.monotonic() < deadline and not listening:
            assert process.poll() is None, (tmp_path / "locust.log").read_text()[-2000:]
            listening = [(c.laddr.ip, c.laddr.port)
                         for c in inet_connections(psutil.Process(process.pid))
                         if c.status == psutil.CONN_LISTEN]
            time.sleep(0.2)
        assert listening == [("127.0.0.1", port)], listening
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
