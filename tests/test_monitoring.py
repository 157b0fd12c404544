"""docker-compose.yml's `monitoring` profile: Prometheus' configuration passes `promtool check
config`, every server's metrics page is scraped where the registry says it is, and the Grafana
dashboard loads, names the provisioned data source and asks only valid PromQL (each panel's
query checked by `promtool check rules`) about metrics the servers and the locustfile publish.

promtool comes from Debian's `prometheus` package, unpacked (not installed: no daemon starts)
by `make test` into .cache/prometheus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploybench.serving import targets

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "docker" / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "deploybench.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "deploybench.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    unpacked = REPO / ".cache" / "prometheus" / "usr" / "bin" / "promtool"
    if found is None and unpacked.is_file():
        found = str(unpacked)
    assert found, ("promtool not found: `make test` unpacks Debian's prometheus package into "
                   ".cache/prometheus (or set PROMTOOL)")
    return found


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_prometheus_configuration_passes_promtool(promtool: str) -> None:
    result = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_configuration(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_CONFIG.read_text().replace("scrape_interval: 5s",
                                                            "scrape_interval: soon"))
    assert run(promtool, "check", "config", str(broken)).returncode != 0


def scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_every_server_is_scraped_where_the_registry_says() -> None:
    jobs = scrape_jobs()
    scraped = {(target.split(":")[0], job["metrics_path"])
               for job in jobs.values() for static in job["static_configs"]
               for target in static["targets"]}
    for target in targets.targets().values():
        if target.compose_service is None or target.metrics is None:
            continue
        assert (target.compose_service, target.metrics[1]) in scraped, target.name
    # the load generator's exact figures, from the locust master's web UI
    assert ("locust-master", "/deploybench/metrics") in scraped


def panel_queries() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [{"panel": panel["title"], **query} for panel in dashboard["panels"]
            for query in panel["targets"]]


def test_dashboard_names_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for query in panel["targets"]:
            assert query["datasource"]["uid"] == datasource["uid"], panel["title"]
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"  # docker-compose.yml's mount


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    queries = panel_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"deploybench:query_{index}", "expr": query["expr"]}
        for index, query in enumerate(queries)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout
    # and a broken query is caught the same way
    rules["groups"][0]["rules"][0]["expr"] = "sum(rate(ts_inference_requests_total[30s]"
    path.write_text(yaml.safe_dump(rules))
    assert run(promtool, "check", "rules", str(path)).returncode != 0


def test_the_dashboard_asks_about_what_the_servers_publish() -> None:
    """Side by side: each server's throughput, latency, queue and model time, errors; the
    metric names are the registry's (the ones the load stage reads) and the locustfile's."""
    text = " ".join(query["expr"] for query in panel_queries())
    for target in targets.targets().values():
        declared = target.time_metrics
        if declared is None or target.compose_service is None:
            continue
        for figure in (declared.request, declared.queue, declared.model, declared.batch):
            if figure is not None:
                assert figure.metric in text, (target.name, figure.metric)
    for name in ("deploybench_requests_total", "deploybench_failures_total",
                 "deploybench_wrong_answers_total", "deploybench_latency_ms"):
        assert name in text, name
    titles = " ".join(query["panel"] for query in panel_queries()).lower()
    for topic in ("throughput", "p50", "p99", "queue", "model", "errors"):
        assert topic in titles, topic
