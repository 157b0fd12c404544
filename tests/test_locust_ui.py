"""The locust web UI in headless Chromium: pick the TorchServe user class, start a swarm against
real native TorchServe, watch the request count rise, stop it; a screenshot is kept."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from deploybench.loadtest import histogram, intervals
from deploybench.loadtest.process import LOCUSTFILE
from deploybench.serving.manager import Deployment
from tests.browser import chromium_page
from tests.servers import native_torchserve, wait_for

pytestmark = pytest.mark.slow

REQUEST_NAME = "torchserve/rest digits-mlp"




def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def torchserve(export_root: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    with native_torchserve(export_root, ["digits-mlp"], tmp_path_factory.mktemp("ui-state"),
                           tmp_path_factory.mktemp("ui-serve")) as deployment:
        yield deployment


@pytest.fixture
def locust_ui(torchserve: Deployment, export_root: Path, tmp_path: Path) -> Iterator[str]:
    with web_ui(torchserve, export_root, tmp_path) as url:
        yield url


@contextmanager
def web_ui(torchserve: Deployment, export_root: Path, tmp_path: Path,
           *extra: str, workers: int = 0) -> Iterator[str]:
    """`locust -f loadtest/locustfile.py --class-picker` on 127.0.0.1, a free web port; with
    `workers`, as a master with that many worker processes (the options reach them from the
    master)."""
    port, master_port = free_port(), free_port()
    log = (tmp_path / "locust.log").open("wb")
    distributed = ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port",
                   str(master_port), "--expect-workers", str(workers)] if workers else []
    commands = [[sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--class-picker",
                 "--web-host", "127.0.0.1", "--web-port", str(port), *distributed,
                 "--export-root", str(export_root), "--model", "digits-mlp",
                 "--torchserve-url", torchserve.endpoints["torchserve_inference"], *extra]]
    commands += [[sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
                  "--master-host", "127.0.0.1", "--master-port", str(master_port)]] * workers
    processes = [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
                 for command in commands]
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        for process in processes:
            assert process.poll() is None, (tmp_path / "locust.log").read_text()[-2000:]
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def workers_ready() -> bool:
        return requests.get(f"{url}stats/requests", timeout=2).json().get(
            "workers", []).__len__() >= workers

    try:
        wait_for(answers, 30, "the locust web UI answers")
        if workers:
            wait_for(workers_ready, 30, f"{workers} workers report to the master")
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def request_count(page: Any) -> int:
    row = page.get_by_role("row", name=REQUEST_NAME)
    if row.count() == 0:
        return 0
    cells = row.first.locator("td")
    return int(cells.nth(2).inner_text().strip() or 0)


def wait_for_requests(page: Any, url: str, log: Path, count: int, timeout: float) -> None:
    """Wait for the page to count more than `count` requests; if it does not, say what the
    page, locust's own stats and its log showed."""
    try:
        wait_for(lambda: request_count(page) > count, timeout, f"{count} requests are counted")
    except AssertionError as error:
        try:
            stats = requests.get(f"{url}stats/requests", timeout=5).json()
            stats = {key: stats.get(key) for key in ("state", "user_count", "total_rps",
                                                     "fail_ratio", "errors")}
        except (requests.RequestException, ValueError) as failed:
            stats = {"unreadable": str(failed)}
        raise AssertionError(f"{error}; page: {page.inner_text('body')[:1500]!r}; locust's "
                             f"stats: {stats}; its log: {log.read_text()[-3000:]}") from None


def start_torchserve_swarm(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")  # the form wired before it is used
    # the class picker ticks every class it offers (those whose server answers); keep one
    page.get_by_role("row").first.locator("input[type=checkbox]").uncheck()
    page.get_by_role("row", name="TorchServeRESTUser").locator("input[type=checkbox]").check()
    page.fill("input[name=userCount]", "2")
    page.fill("input[name=spawnRate]", "2")
    page.get_by_role("button", name="Start").click()
    # The page turns to the running view when locust's answer to the swarm arrives. Twice on
    # a busy CI machine the swarm ran (locust's own stats said so) while the page kept its
    # start form for 90 s: a page opened afresh shows the running swarm
    try:
        page.get_by_role("button", name="Stop").wait_for(timeout=20_000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError
        if requests.get(f"{url.rstrip('/')}/stats/requests", timeout=5).json()["state"] in (
                "running", "spawning"):
            page.reload()
            page.get_by_role("button", name="Stop").wait_for(timeout=20_000)
        else:
            raise


def test_pick_torchserve_swarm_and_stop_in_the_web_ui(locust_ui: str,
                                                      test_artifacts: Path) -> None:
    with chromium_page() as page:
        page.goto(locust_ui)
        # offered and ticked: TorchServe's classes (its server answers); TF Serving's (no
        # server at their addresses) left out of the picker and named above it
        for name in ("TorchServeRESTUser", "TorchServeNpyUser"):
            assert page.get_by_role("row", name=name).locator(
                "input[type=checkbox]").is_checked(), name
        banner = page.locator("#deploybench-absent-servers").inner_text()
        for name, address in (("TFServingRESTUser", "http://127.0.0.1:8501"),
                              ("TFServingGRPCUser", "127.0.0.1:8500")):
            assert page.get_by_role("row", name=name).count() == 0, name
            assert f"{name} ({address})" in banner
        assert "TorchServe" not in banner
        page.screenshot(path=str(test_artifacts / "locust-ui-class-picker.png"))
        # keep TorchServe's JSON body only
        page.get_by_role("row").first.locator("input[type=checkbox]").uncheck()
        torchserve = page.get_by_role("row", name="TorchServeRESTUser")
        torchserve.locator("input[type=checkbox]").check()
        assert not page.get_by_role("row", name="TorchServeNpyUser").locator(
            "input[type=checkbox]").is_checked()
        page.fill("input[name=userCount]", "2")
        page.fill("input[name=spawnRate]", "2")
        page.get_by_role("button", name="Start").click()

        # generous: beside the other test worker, the page's first poll can come late
        first = wait_for(lambda: request_count(page), 90, "requests are counted")
        wait_for(lambda: request_count(page) > first, 60, "the request count rises")
        row = page.get_by_role("row", name=REQUEST_NAME).first
        assert row.locator("td").nth(3).inner_text().strip() == "0"  # no failures
        body = page.inner_text("body")
        assert "RUNNING" in body and "tfserving" not in body
        page.screenshot(path=str(test_artifacts / "locust-ui-torchserve-swarm.png"),
                        full_page=True)

        page.get_by_role("button", name="Stop").click()
        wait_for(lambda: "STOPPED" in page.inner_text("body"), 20, "the swarm stops")
        stopped_at = request_count(page)
        time.sleep(1.5)
        assert request_count(page) == stopped_at  # nothing is sent any more


@pytest.mark.parametrize("workers", [0, 2], ids=["local", "distributed"])
def test_the_deploybench_tab_shows_the_exact_p99_and_its_interval_as_the_kit_writes_them(
        torchserve: Deployment, export_root: Path, tmp_path: Path, test_artifacts: Path,
        workers: int) -> None:
    """The web UI's own percentiles are rounded; the kit's tab shows the exact p99 from the
    HDR histogram, its 95% interval and the gates' state, live, and after the swarm stops they
    are what the kit's summary of the same swarm gives; on a master, merged from every
    worker's histogram."""
    summary_file = tmp_path / "summary.json"
    with web_ui(torchserve, export_root, tmp_path, "--slo", "p99<=10s,wrong_answers==0",
                "--summary-file", str(summary_file), workers=workers) as url, \
            chromium_page() as page:
        start_torchserve_swarm(page, url)
        # enough for both ends of the p99's interval (about 370 requests bound its top)
        wait_for_requests(page, url, tmp_path / "locust.log", 500, 90)
        page.get_by_role("tab", name="Exact latency (deploybench)").click()
        row = page.get_by_role("row", name=REQUEST_NAME).first
        wait_for(lambda: row.count() and row.locator("td").nth(1).inner_text().strip() != "0",
                 30, "the tab shows the live count")
        page.get_by_role("button", name="Stop").click()
        wait_for(summary_file.is_file, 20, "the summary is written at the stop")
        # a master hears its workers' last reports after it stopped, when its page no longer
        # polls: the page opened afresh shows the stopped swarm's final figures
        time.sleep(3)
        page.reload()
        page.get_by_role("tab", name="Exact latency (deploybench)").click()
        row = page.get_by_role("row", name=REQUEST_NAME).first
        wait_for(lambda: row.count() and row.locator("td").nth(1).inner_text().strip() != "0",
                 30, "the reopened tab shows the count")
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        titles = [t.strip() for t in
                  row.locator("xpath=ancestor::table").locator("th").all_inner_texts()]
        # the same figures for Prometheus (compose's monitoring profile scrapes the master)
        exported = {(sample.name, sample.labels.get("quantile")): sample.value
                    for family in text_string_to_metric_families(
                        requests.get(f"{url}deploybench/metrics", timeout=5).text)
                    for sample in family.samples
                    if sample.labels.get("name") == REQUEST_NAME}
        page.screenshot(path=str(test_artifacts / f"locust-ui-deploybench-tab-"
                                                  f"{'distributed' if workers else 'local'}.png"),
                        full_page=True)
    summary = json.loads(summary_file.read_text())
    tally = summary["requests"][REQUEST_NAME]
    exact = histogram.decode(tally["histogram"])
    p99 = histogram.latency_ms(exact)["p99"]
    low, high = intervals.percentile_intervals(exact)["p99"]
    shown = dict(zip(titles, cells, strict=True))
    assert shown["Requests"] == str(tally["requests"]) and shown["Wrong answers"] == "0"
    assert shown["p99 ms"] == f"{p99:.3f}"
    assert low is not None and high is not None
    assert shown["p99 95% interval"] == f"[{low:.3f}, {high:.3f}]"
    assert shown["SLO gates"] == "p99<=10s: pass; wrong_answers==0: pass"
    assert exported[("deploybench_requests_total", None)] == tally["requests"]
    assert exported[("deploybench_wrong_answers_total", None)] == 0
    assert exported[("deploybench_latency_ms", "0.99")] == pytest.approx(p99)
    if workers:  # both workers sent requests, and the master's figures are their sum
        assert summary["role"] == "master"
        shares = [tallies[REQUEST_NAME]["requests"] for tallies in summary["workers"].values()]
        assert len(shares) == workers and all(shares) and sum(shares) == tally["requests"]
