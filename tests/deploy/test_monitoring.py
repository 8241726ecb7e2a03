"""Prometheus configuration and alerts (promtool: check config, check rules, test rules), Alertmanager's
configuration (amtool), the Grafana dashboard (valid PromQL, provisioned data source) and the log pipeline, all
tied to what the service and the exporters export and to the services Compose deploys."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import yaml

from library_api.dependencies.context import AppContext
from library_api.observability.logging import JsonFormatter
from library_api.security.permissions import Role
from tests.deploy.support import (
    ALL_EXPORTER_METRICS,
    CONTRACT_METRICS,
    DEPLOY,
    DESCRIBED_METRICS,
    PROMETHEUS_SYNTHETIC,
    ROOT,
    family_of,
    load_yaml,
    metric_names,
    parse_exposition,
    run,
    tool,
)
from tests.support.factories import user_headers

PROMETHEUS = DEPLOY / "prometheus"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "library-api.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


def prometheus_copy(directory: Path) -> Path:
    """The configuration and rules in ``directory``, the scrape token pointed at a file that exists there."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    token = directory / "scrape-token"
    token.write_text("token\n")
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(token)
    shutil.copy(PROMETHEUS / "alerts.yml", directory / "alerts.yml")
    target = directory / "prometheus.yml"
    target.write_text(yaml.safe_dump(config))
    return target


def dashboard_panels() -> list[dict[str, Any]]:
    """The dashboard's graph panels (rows, which only group them, left out)."""
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return [panel for panel in panels if panel["type"] != "row"]


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def alert_expressions() -> dict[str, str]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def substituted(expression: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    assert "$" not in expression, f"unknown Grafana variable in {expression}"
    return expression


def referenced_metrics() -> dict[str, set[str]]:
    """Metric families read by each alert and each dashboard query."""
    sources = {f"alert {name}": expr for name, expr in alert_expressions().items()}
    sources |= {f"dashboard query {i}": expr for i, expr in enumerate(dashboard_expressions())}
    return {where: {family_of(name) for name in metric_names(expr)} for where, expr in sources.items()}


def test_prometheus_configuration_passes_promtool(tmp_path: Path) -> None:
    result = run(tool("promtool"), "check", "config", prometheus_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_catches_a_broken_configuration(tmp_path: Path) -> None:
    config = prometheus_copy(tmp_path)
    config.write_text(config.read_text().replace("scrape_interval: 15s", "scrape_interval: fifteen"))
    assert run(tool("promtool"), "check", "config", config).returncode != 0


def test_every_scrape_job_is_a_deployed_service() -> None:
    """The API, the exporters for the host, PostgreSQL and Redis, Alertmanager and Prometheus itself, each reached
    on a Compose service's port over a network Prometheus shares with it; nothing else (no Thanos, no remote write)."""
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"library-api", "node", "postgres", "redis", "alertmanager", "prometheus"}
    assert "remote_write" not in config
    assert "remote_read" not in config
    api = jobs["library-api"]
    assert api["metrics_path"] == "/metrics"
    services = load_yaml(ROOT / "compose.yaml")["services"]
    assert api["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "30s"}]
    assert "8000" in services["api"]["expose"]
    expected = {
        "node": ("node-exporter", 9100),
        "postgres": ("postgres-exporter", 9187),
        "redis": ("redis-exporter", 9121),
        "alertmanager": ("alertmanager", 9093),
    }
    prometheus_networks = set(services["prometheus"]["networks"])
    for job, (service, port) in expected.items():
        assert jobs[job]["static_configs"] == [{"targets": [f"{service}:{port}"]}], job
        assert service in services, f"{job} scrapes {service}, which Compose does not run"
        assert set(services[service]["networks"]) & prometheus_networks, f"Prometheus cannot reach {service}"
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]


def test_alerts_go_to_the_deployed_alertmanager() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    services = load_yaml(ROOT / "compose.yaml")["services"]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    alertmanager = services["alertmanager"]
    assert "--config.file=/run/secrets/alertmanager_config" in alertmanager["command"]
    assert "--cluster.listen-address=" in alertmanager["command"], "one instance: no gossip port"
    assert alertmanager["secrets"] == ["alertmanager_config"]
    secrets = load_yaml(ROOT / "compose.yaml")["secrets"]
    assert secrets["alertmanager_config"] == {"file": "./deploy/alertmanager/alertmanager.generated.yml"}
    assert set(alertmanager["networks"]) & set(services["prometheus"]["networks"])


def test_alertmanager_configuration_passes_amtool() -> None:
    result = run(tool("amtool"), "check-config", ALERTMANAGER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_catches_a_broken_alertmanager_configuration(tmp_path: Path) -> None:
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(ALERTMANAGER.read_text().replace("receiver: webhook", "receiver: pager", 1))
    result = run(tool("amtool"), "check-config", broken)
    assert result.returncode != 0
    assert 'undefined receiver "pager"' in result.stdout + result.stderr


def test_every_alert_is_routed_to_the_webhook_with_the_url_deploy_writes() -> None:
    """Whatever an alert's labels, Alertmanager's routing tree (as amtool reads it) sends it to the webhook, whose
    URL is the placeholder deploy.sh replaces with ALERTMANAGER_WEBHOOK_URL."""
    for labels in (["severity=critical", "alertname=LibraryApiInstanceDown"], ["severity=warning"], ["team=x"]):
        result = run(tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.split() == ["webhook"], labels
    config = load_yaml(ALERTMANAGER)
    (receiver,) = config["receivers"]
    (webhook,) = receiver["webhook_configs"]
    placeholder = re.search(r'^WEBHOOK_PLACEHOLDER="([^"]+)"$', (DEPLOY / "deploy.sh").read_text(), re.MULTILINE)
    assert placeholder is not None
    assert webhook["url"] == placeholder.group(1)
    assert ALERTMANAGER.read_text().count(placeholder.group(1)) == 1
    assert webhook["send_resolved"] is True
    # Every alert a routing or inhibition rule names exists.
    names = set(alert_expressions())
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            name = re.fullmatch(r'alertname="(\w+)"', matcher)
            assert name is not None and name.group(1) in names, matcher


def test_alert_rules_pass_promtool_check() -> None:
    result = run(tool("promtool"), "check", "rules", PROMETHEUS / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", PROMETHEUS / "alerts.test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    tests = load_yaml(PROMETHEUS / "alerts.test.yml")["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert set(alert_expressions()) == fired
    assert set(alert_expressions()) >= {
        "LibraryApiInstanceDown",
        "LibraryApiHighErrorRatio",
        "LibraryApiHighLatency",
        "LibraryApiNotReady",
        "LibraryApiWebSocketDrops",
        "LibraryApiRateLimitSurge",
        "LibraryApiDatabaseDown",
        "LibraryApiRedisDown",
        "LibraryApiRedisMemoryHigh",
        "HostDiskFilling",
        "HostDiskAlmostFull",
        "HostMemoryLow",
    }


def test_promtool_unit_tests_catch_a_wrong_expectation(tmp_path: Path) -> None:
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    broken = (PROMETHEUS / "alerts.test.yml").read_text().replace("severity: critical", "severity: page", 1)
    (tmp_path / "alerts.test.yml").write_text(broken)
    assert run(tool("promtool"), "test", "rules", tmp_path / "alerts.test.yml", cwd=tmp_path).returncode != 0


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, Grafana's variables substituted, becomes a recording rule for promtool to parse."""
    expressions = dashboard_expressions()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query{i}", "expr": substituted(e)} for i, e in enumerate(expressions)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(expressions)} rules found" in result.stdout


def test_the_dashboard_covers_what_operators_watch() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for needed in (
        "request rate",
        "error ratio",
        "p50 / p95 / p99",
        "in progress",
        "websocket",
        "bookings",
        "cache hit ratio",
        "memory",
        "postgresql",
        "redis memory",
        "disk space",
        "host cpu",
    ):
        assert needed in titles or needed.split()[0] in titles, f"no panel for {needed}"
    assert any("bookings_created_total" in expr for expr in dashboard_expressions())
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(f"histogram_quantile({quantile}," in expr for expr in dashboard_expressions())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "library-api"
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Database (PostgreSQL)", "Redis", "Host"]
    # The exporters' panels read their own scrape job: one row each, in order after the service's panels.
    jobs = {"Database (PostgreSQL)": "postgres", "Redis": "redis", "Host": "node"}
    current = None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = jobs[panel["title"]]
        for target in panel.get("targets", []):
            expected = f'job="{current}"' if current else 'job="library-api"'
            assert expected in target["expr"], f"{panel['title']}: {target['expr']}"


def test_the_dashboard_uses_the_provisioned_data_source() -> None:
    sources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yml")["datasources"]
    prometheus = next(source for source in sources if source["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090"
    used = {json.dumps(panel["datasource"], sort_keys=True) for panel in dashboard_panels()}
    assert used == {json.dumps({"type": "prometheus", "uid": prometheus["uid"]}, sort_keys=True)}
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml")["providers"][0]
    grafana = load_yaml(ROOT / "compose.yaml")["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


def test_alerts_and_dashboard_read_only_metrics_of_the_contract() -> None:
    """Names are the seed's contract, Prometheus's own, the few the contract describes without naming, or the
    exporters' (tests/deploy/support.py EXPORTER_METRICS, checked against the running exporters by the stack test)."""
    known = CONTRACT_METRICS | PROMETHEUS_SYNTHETIC | set(DESCRIBED_METRICS) | ALL_EXPORTER_METRICS
    problems = [f"{where}: {name}" for where, names in referenced_metrics().items() for name in names - known]
    assert not problems, "\n".join(problems)
    everything = set().union(*referenced_metrics().values())
    assert {"http_requests_total", "http_request_duration_seconds", "http_requests_in_progress"} <= everything


async def test_alerts_and_dashboard_read_metrics_the_service_exports(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    _, headers = await user_headers(ctx, Role.ADMIN)
    await client.get("/health")
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    # The exporters' names are checked against the exporters themselves (tests/e2e/test_monitoring_stack.py).
    exported = {family_of(name) for name in parse_exposition(response.text)}
    exported |= PROMETHEUS_SYNTHETIC | ALL_EXPORTER_METRICS
    problems = [f"{where}: {name}" for where, names in referenced_metrics().items() for name in names - exported]
    assert not problems, "metrics read by alerts or the dashboard that the service does not export:\n" + "\n".join(
        problems
    )


def test_metric_name_extraction() -> None:
    """The parser the checks above rely on."""
    expression = (
        'histogram_quantile(0.95, sum by (le, endpoint) (rate(http_request_duration_seconds_bucket{job="x", '
        'status=~"5.."}[5m]))) / on(instance) group_left up > 0 and absent(health_ready)'
    )
    assert metric_names(expression) == {"http_request_duration_seconds_bucket", "up", "health_ready"}
    assert parse_exposition("# TYPE a counter\na_total 1\n# TYPE h histogram\n") >= {"a_total", "h_bucket", "h_sum"}


def test_the_log_pipeline_reads_the_services_json_logs() -> None:
    compose = load_yaml(ROOT / "compose.yaml")
    promtail = load_yaml(DEPLOY / "promtail" / "promtail.yaml")
    loki = load_yaml(DEPLOY / "loki" / "loki.yaml")
    assert promtail["clients"] == [{"url": f"http://loki:{loki['server']['http_listen_port']}/loki/api/v1/push"}]
    filters = promtail["scrape_configs"][0]["docker_sd_configs"][0]["filters"]
    assert filters == [{"name": "label", "values": [f"com.docker.compose.project={compose['name']}"]}]
    api_stage = promtail["scrape_configs"][0]["pipeline_stages"][0]["match"]
    assert re.search(r"\bapi\b", api_stage["selector"])
    keys = api_stage["stages"][0]["json"]["expressions"]
    assert {"level", "logger", "ts"} <= set(keys), "the fields JsonFormatter writes"
    line = json.loads(JsonFormatter().format(logging.makeLogRecord({"msg": "x", "levelname": "INFO", "name": "n"})))
    assert {"level", "logger", "ts"} <= set(line)
    assert loki["schema_config"]["configs"][0]["schema"] == "v13"
    assert loki["compactor"]["retention_enabled"] is True
