"""Monitoring run for real: after ``deploy/deploy.sh full`` Prometheus scrapes the service with the token it created,
the exporters for the host, PostgreSQL and Redis (Debian's packages) are scraped, and when a service instance
stops, ``LibraryApiInstanceDown`` fires and Alertmanager (Debian's package) delivers it to a webhook receiver
this module runs.

Everything runs on loopback with the deployed configurations, changed only where the machine differs from
Compose, each change checked to apply exactly once:

- Prometheus: deploy/prometheus/prometheus.yml with the Compose service names replaced by the loopback ports,
  the scrape token read from the file ``deploy.sh`` wrote, and 1 s scrape and evaluation intervals; alerts.yml
  with ``LibraryApiInstanceDown``'s ``for`` shortened from 1 minute to 2 s (to keep the module fast).
- Alertmanager: the configuration ``deploy.sh`` wrote from deploy/alertmanager/alertmanager.yml with
  ``ALERTMANAGER_WEBHOOK_URL`` (this module's receiver), ``group_wait`` shortened from 30 s to 1 s; the command
  line of compose.yaml with the loopback address added.
- node-exporter: only the collectors the alerts and the dashboard read (cpu, loadavg, meminfo, filesystem), and
  no ``--path.rootfs`` (the host is not mounted elsewhere here).
- ``deploy.sh full`` runs with the stand-in for the Compose CLI (tests/deploy/compose_shim.py): the engine
  cannot run here; the commands it runs in the containers (migrate, tokens create) run for real.

Two instances of the service are scraped: Gunicorn with deploy/gunicorn.conf.py (as the image runs it), which
every test may rely on, and a second instance that only the alert test stops.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.compose_shim import deploy_checkout, install_docker_shim, shim_environment
from tests.deploy.processes import (
    Webhook,
    on_service_port,
    running,
    substitute,
    webhook_receiver,
)
from tests.deploy.support import (
    DEPLOY,
    EXPORTER_METRICS,
    ROOT,
    VENV_BIN,
    load_yaml,
    parse_exposition,
    tool,
)
from tests.e2e.test_deploy_stack import cli, gunicorn, production_environment
from tests.support.databases import scratch_postgres_database
from tests.support.polling import wait_answering, wait_for
from tests.support.ports import listening_socket, port_of, process_listens, service_port
from tests.support.services import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    REDIS_URL,
    require_postgres,
    require_redis,
)

# One xdist worker runs this module, so its module-scoped servers start once (docs/testing.md).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.xdist_group("monitoring-stack"),
]

NODE_COLLECTORS = ["cpu", "loadavg", "meminfo", "filesystem"]


@dataclass
class Ports:
    """The loopback ports of every piece (Prometheus's configuration names them all).

    The two service instances serve on listening sockets bound here (``--fd``, ``fd://N``). The exporters and
    Prometheus take ports of this xdist worker's range as they start (:func:`tests.deploy.processes.on_service_port`:
    again elsewhere when theirs is taken, started once their own process listens). Alertmanager starts last, on
    the configuration ``deploy.sh`` writes, but Prometheus names it from the start: its port is chosen from the
    same range up front, and it too counts as started only once its own process listens there.
    """

    api_listener: socket.socket = field(default_factory=listening_socket)
    victim_listener: socket.socket = field(default_factory=listening_socket)
    alertmanager: int = field(default_factory=service_port)
    node: int = 0
    postgres: int = 0
    redis: int = 0
    prometheus: int = 0
    api: int = 0
    victim: int = 0

    def __post_init__(self) -> None:
        self.api = port_of(self.api_listener)  # kept: the sockets are closed here once their servers hold them
        self.victim = port_of(self.victim_listener)


@dataclass
class Monitoring:
    """The running monitoring stack and what the tests look at."""

    work: Path
    ports: Ports
    webhook: Webhook
    victim: subprocess.Popen[bytes]
    token_file: Path
    full: subprocess.CompletedProcess[str]
    error_before_full: str

    def prometheus(self, path: str, **params: str) -> Any:
        """The ``data`` of a Prometheus HTTP API answer."""
        answer = httpx.get(f"http://127.0.0.1:{self.ports.prometheus}/api/v1/{path}", params=params, timeout=5)
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    def targets(self) -> dict[str, dict[str, Any]]:
        """Prometheus's active targets by scrape URL."""
        return {target["scrapeUrl"]: target for target in self.prometheus("targets")["activeTargets"]}


def prometheus_config(work: Path, ports: Ports, token_file: Path) -> Path:
    """deploy/prometheus as deployed, pointed at the loopback ports (see the module's docstring)."""
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    (alerting,) = config["alerting"]["alertmanagers"]
    assert alerting["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    alerting["static_configs"] = [{"targets": [f"127.0.0.1:{ports.alertmanager}"]}]
    loopback = {
        "node-exporter:9100": ports.node,
        "postgres-exporter:9187": ports.postgres,
        "redis-exporter:9121": ports.redis,
        "alertmanager:9093": ports.alertmanager,
        "localhost:9090": ports.prometheus,
    }
    for job in config["scrape_configs"]:
        if job["job_name"] == "library-api":
            assert job.pop("dns_sd_configs") == [
                {"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "30s"}
            ]
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ports.api}", f"127.0.0.1:{ports.victim}"]}]
            assert job["authorization"]["credentials_file"] == "/run/secrets/prometheus_scrape_token"
            job["authorization"]["credentials_file"] = str(token_file)
        else:
            (static,) = job["static_configs"]
            (target,) = static["targets"]
            static["targets"] = [f"127.0.0.1:{loopback.pop(target)}"]
    assert not loopback, f"jobs no longer in prometheus.yml: {loopback}"

    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    (down,) = [
        rule for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == "LibraryApiInstanceDown"
    ]
    assert down["for"] == "1m"
    down["for"] = "2s"
    directory = work / "prometheus"
    directory.mkdir(exist_ok=True)  # written again when Prometheus moves to another port
    (directory / "alerts.yml").write_text(yaml.safe_dump(rules))
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def exporter_commands(database: str) -> dict[str, tuple[Callable[[int], list[str]], dict[str, str]]]:
    """The three exporters' command lines (for a port) and environments, configured as compose.yaml configures them."""
    services = load_yaml(ROOT / "compose.yaml")["services"]
    name = database.rsplit("/", 1)[1]
    postgres = {
        key: value.replace("db:5432", f"{POSTGRES_HOST}:{POSTGRES_PORT}").replace("${POSTGRES_DB:-library}", name)
        for key, value in services["postgres-exporter"]["environment"].items()
        if key == "DATA_SOURCE_URI"
    }
    postgres.update(DATA_SOURCE_USER="postgres", DATA_SOURCE_PASS="")
    redis_address = REDIS_URL.split("//", 1)[1].split("/", 1)[0].rpartition("@")[2]
    assert services["redis-exporter"]["environment"]["REDIS_ADDR"] == "redis://redis:6379"
    redis = {"REDIS_ADDR": f"redis://{redis_address}", "REDIS_PASSWORD": ""}
    node = [f"--collector.{collector}" for collector in NODE_COLLECTORS]
    return {
        "node": (
            lambda port: [
                tool("prometheus-node-exporter"),
                f"--web.listen-address=127.0.0.1:{port}",
                "--collector.disable-defaults",
                *node,
            ],
            {},
        ),
        "postgres": (
            lambda port: [tool("prometheus-postgres-exporter"), f"--web.listen-address=127.0.0.1:{port}"],
            postgres,
        ),
        "redis": (lambda port: [tool("prometheus-redis-exporter"), f"-web.listen-address=127.0.0.1:{port}"], redis),
    }


def alertmanager_command(work: Path, written: Path, port: int) -> list[str]:
    """compose.yaml's Alertmanager command line on the configuration deploy.sh wrote (group_wait shortened)."""
    config = work / "alertmanager.yml"
    config.write_text(substitute(written.read_text(), "group_wait: 30s", "group_wait: 1s"))
    command = [tool("prometheus-alertmanager")]
    for argument in load_yaml(ROOT / "compose.yaml")["services"]["alertmanager"]["command"]:
        flag, _, _ = argument.partition("=")
        value = {"--config.file": str(config), "--storage.path": str(work / "alertmanager-data")}.get(flag)
        command.append(f"{flag}={value}" if value else argument)
    assert command[1:] == [
        f"--config.file={config}",
        f"--storage.path={work / 'alertmanager-data'}",
        "--cluster.listen-address=",
    ]
    return [*command, f"--web.listen-address=127.0.0.1:{port}"]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A scratch PostgreSQL database for this module, dropped afterwards."""
    require_postgres()
    require_redis()
    tool("psql")
    with scratch_postgres_database("monitoring_e2e") as url:
        yield url


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Monitoring]:
    """The exporters, Prometheus, two service instances and the webhook receiver; then ``deploy.sh full`` on a
    scratch checkout whose scrape token Prometheus reads; then Alertmanager on the configuration it wrote."""
    for name in ("prometheus", "prometheus-alertmanager", "amtool"):
        tool(name)
    work = tmp_path_factory.mktemp("monitoring-stack")
    ports = Ports()
    env = production_environment(
        SECRET_KEY="e2e-" + uuid.uuid4().hex + uuid.uuid4().hex,
        DATABASE_URL=database,
        REDIS_URL=REDIS_URL,
        HOST="127.0.0.1",
        UPLOAD_DIR=str(work / "uploads"),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        CACHE_KEY_PREFIX=f"e2e{uuid.uuid4().hex[:8]}_",
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    with ExitStack() as stack, webhook_receiver() as webhook:
        checkout = work / "checkout"
        script = deploy_checkout(
            checkout,
            {
                "SECRET_KEY": env["SECRET_KEY"],
                "POSTGRES_PASSWORD": "unused-here",
                "REDIS_PASSWORD": "unused-here",
                "GRAFANA_ADMIN_PASSWORD": "unused-here",
                "ALLOWED_HOSTS": "127.0.0.1",
                "ALERTMANAGER_WEBHOOK_URL": webhook.url,
            },
        )
        token_file = checkout / "deploy" / "prometheus" / "scrape-token"
        # Everything that does not need the database starts first, and comes up while it is migrated.
        for name, (command, extra) in exporter_commands(database).items():
            _, port = stack.enter_context(
                on_service_port(
                    command,
                    log=lambda port, name=name: work / f"{name}-exporter-{port}.log",
                    what=f"the {name} exporter",
                    env={**os.environ, **extra},
                )
            )
            setattr(ports, name, port)

        def prometheus(port: int) -> list[str]:
            ports.prometheus = port
            return [
                tool("prometheus"),
                f"--config.file={prometheus_config(work, ports, token_file)}",
                f"--storage.tsdb.path={work / f'tsdb-{port}'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ]

        stack.enter_context(
            on_service_port(prometheus, log=lambda port: work / f"prometheus-{port}.log", what="Prometheus")
        )
        cli(env, "migrate", cwd=work)
        victim_fd = ports.victim_listener.fileno()
        victim = stack.enter_context(
            running(
                [str(VENV_BIN / "library-api"), "serve", "--fd", str(victim_fd)],
                log=work / "victim.log",
                env={key: value for key, value in env.items() if key != "PROMETHEUS_MULTIPROC_DIR"},
                cwd=work,
                pass_fds=(victim_fd,),
            )
        )
        ports.victim_listener.close()  # the victim holds the port now: it closes when the victim stops
        wait_answering(f"http://127.0.0.1:{ports.victim}/health/ready", victim, 120)
        (work / "multiproc-api").mkdir()
        stack.enter_context(
            gunicorn({**env, "PROMETHEUS_MULTIPROC_DIR": str(work / "multiproc-api")}, ports.api_listener, work)
        )
        state = Monitoring(work, ports, webhook, victim, token_file, subprocess.CompletedProcess([], 0), "")

        # Before deploy.sh: the service answers, but without a token every scrape of it is refused.
        api_url = f"http://127.0.0.1:{ports.api}/metrics"

        def scrape_error() -> str:
            error: str = state.targets().get(api_url, {}).get("lastError", "")
            return error if "connection refused" not in error else ""

        wait_for(lambda: scrape_error() != "", 30, "the API was never scraped")
        state.error_before_full = scrape_error()

        install_docker_shim(work / "bin")
        state.full = subprocess.run(
            [str(script), "full"],
            env=shim_environment(
                work / "bin",
                work / "docker-calls.jsonl",
                work / "container",
                **env,
                SKIP_TESTS="1",
                HEALTH_BASE_URL=f"http://127.0.0.1:{ports.api}",
                HEALTH_PUBLIC_ENTRY="0",
                HEALTH_TIMEOUT="30",
            ),
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert state.full.returncode == 0, state.full.stdout + state.full.stderr

        written = checkout / "deploy" / "alertmanager" / "alertmanager.generated.yml"
        alertmanager = stack.enter_context(
            running(alertmanager_command(work, written, ports.alertmanager), log=work / "alertmanager.log")
        )
        if not process_listens(alertmanager, ports.alertmanager, 30, "Alertmanager"):
            log = (work / "alertmanager.log").read_text(errors="replace")
            raise AssertionError(f"Alertmanager exited with {alertmanager.returncode} (port chosen up front):\n{log}")
        yield state


def test_deploy_full_gives_prometheus_its_token_with_no_manual_step(monitoring: Monitoring) -> None:
    """Before ``deploy.sh full`` the empty token fails every scrape of the service; after it, the same running
    Prometheus scrapes it, reading the file deploy.sh wrote (0644, for the container's user nobody)."""
    assert "401" in monitoring.error_before_full or "credentials" in monitoring.error_before_full, (
        monitoring.error_before_full
    )
    assert "scrape token written" in monitoring.full.stdout
    assert "all health checks passed" in monitoring.full.stdout
    assert monitoring.token_file.read_text().startswith("lib_")
    assert monitoring.token_file.stat().st_mode & 0o777 == 0o644
    api_url = f"http://127.0.0.1:{monitoring.ports.api}/metrics"
    wait_for(
        lambda: monitoring.targets()[api_url]["health"] == "up",
        30,
        "Prometheus never scraped the service with its token",
    )


def test_prometheus_scrapes_the_service_and_every_exporter(monitoring: Monitoring) -> None:
    ports = monitoring.ports
    expected = {
        "library-api": f"http://127.0.0.1:{ports.api}/metrics",
        "node": f"http://127.0.0.1:{ports.node}/metrics",
        "postgres": f"http://127.0.0.1:{ports.postgres}/metrics",
        "redis": f"http://127.0.0.1:{ports.redis}/metrics",
        "alertmanager": f"http://127.0.0.1:{ports.alertmanager}/metrics",
    }

    def down() -> dict[str, str]:
        targets = monitoring.targets()
        return {
            job: targets.get(url, {}).get("lastError", "not a target")
            for job, url in expected.items()
            if targets.get(url, {}).get("health") != "up"
        }

    try:
        wait_for(lambda: not down(), 60, "not every target is up")
    except AssertionError:
        pytest.fail(f"targets not up after 60 s: {down()}")
    for metric in ("pg_up", "redis_up"):
        wait_for(
            lambda metric=metric: (
                [r["value"][1] for r in monitoring.prometheus("query", query=metric)["result"]] == ["1"]
            ),
            30,
            f"{metric} is not 1: the exporter does not reach its server",
        )
    assert monitoring.prometheus("alertmanagers")["activeAlertmanagers"] == [
        {"url": f"http://127.0.0.1:{ports.alertmanager}/api/v2/alerts"}
    ]


def test_the_exporters_export_every_metric_the_alerts_and_dashboard_read(monitoring: Monitoring) -> None:
    """tests/deploy/support.py EXPORTER_METRICS against the real exporters' /metrics."""
    ports = {"node": monitoring.ports.node, "postgres": monitoring.ports.postgres, "redis": monitoring.ports.redis}
    for job, names in EXPORTER_METRICS.items():
        exposition = httpx.get(f"http://127.0.0.1:{ports[job]}/metrics", timeout=10).text
        missing = names - parse_exposition(exposition)
        assert not missing, f"the {job} exporter does not export {sorted(missing)}"


def test_a_stopped_instance_fires_an_alert_that_reaches_the_webhook(monitoring: Monitoring) -> None:
    """The second instance stops: Prometheus finds it down, ``LibraryApiInstanceDown`` fires, and Alertmanager
    delivers it to the receiver named by ALERTMANAGER_WEBHOOK_URL."""
    instance = f"127.0.0.1:{monitoring.ports.victim}"
    url = f"http://{instance}/metrics"
    wait_for(lambda: monitoring.targets()[url]["health"] == "up", 30, "the second instance was never scraped")
    monitoring.victim.terminate()
    assert monitoring.victim.wait(timeout=60) == 0

    def delivered() -> list[dict[str, Any]]:
        return [
            alert
            for alert in monitoring.webhook.alerts()
            if alert["labels"].get("alertname") == "LibraryApiInstanceDown"
            and alert["labels"].get("instance") == instance
            and alert["status"] == "firing"
        ]

    wait_for(lambda: bool(delivered()), 60, "LibraryApiInstanceDown never reached the webhook")
    alert = delivered()[0]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["job"] == "library-api"
    assert alert["annotations"]["summary"] == f"Library API instance {instance} is down"
    with monitoring.webhook.lock:
        notification = next(n for n in monitoring.webhook.notifications if alert in n["alerts"])
    assert notification["receiver"] == "webhook"
    assert notification["groupLabels"] == {"alertname": "LibraryApiInstanceDown", "instance": instance}
