"""deploy/: the docker compose file, the nginx load balancer and the Prometheus config refer to real
services, ports, settings and environment variables; `docker compose config` validates the file
when docker compose is installed (skipped otherwise: the YAML checks always run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from costproxy.http.middlewares import PUBLIC_PATHS
from costproxy.settings import load_settings
from tests.docs_support import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
SAMPLE_SECRETS = {"POSTGRES_PASSWORD": "pw", "COSTPROXY_ADMIN_TOKEN": "admin", "OPENAI_API_KEY": "sk-test"}


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def replicas() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("image") == "costproxy:local"}


def substituted(value: str) -> str:
    """${VAR:?msg} / ${VAR:-default} / ${VAR} with the sample secrets (what compose would do)."""
    def one(match: re.Match[str]) -> str:
        name, _, rest = match.group(1).partition(":")
        return SAMPLE_SECRETS.get(name, rest[1:] if rest.startswith("-") else "")
    return re.sub(r"\$\{([^}]+)\}", one, value)


def replica_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: substituted(str(v)) for k, v in service["environment"].items()}


def settings_read_env_names() -> set[str]:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "costproxy").rglob("*.py"))
    return set(re.findall(r"[\"'$](COSTPROXY_[A-Z_]+)", source))


def test_two_replicas_with_several_workers_each_share_redis_and_postgres() -> None:
    services = compose()["services"]
    assert len(replicas()) >= 2
    for name, service in replicas().items():
        command = service["command"]
        assert command[0] == "serve" and int(command[command.index("--workers") + 1]) >= 2, name
        env = replica_env(service)
        assert {k for k in env if k.startswith("COSTPROXY_")} <= settings_read_env_names()
        store, ledger = urlsplit(env["COSTPROXY_STORE_URL"]), urlsplit(env["COSTPROXY_LEDGER_URL"])
        assert store.scheme == "redis" and store.hostname in services, "several workers need the shared Redis"
        assert ledger.scheme == "postgresql" and ledger.hostname in services
        assert services[ledger.hostname]["environment"]["POSTGRES_USER"] == ledger.username
        assert set(service["depends_on"]) == {store.hostname, ledger.hostname}
        assert all(d["condition"] == "service_healthy" for d in service["depends_on"].values())
        assert "postgres" in service["build"]["args"]["EXTRAS"], "the image needs psycopg for the ledger"
        assert service["hostname"] == name and service["volumes"][0].endswith(":/app/data")


def test_the_replica_environment_loads_with_the_image_config() -> None:
    for service in replicas().values():
        settings = load_settings(ROOT / "config" / "costproxy.yaml", replica_env(service))
        assert settings.store.url.startswith("redis://")
        assert settings.store.ledger_url is not None and settings.admin.token == "admin"
        assert settings.server.host == "0.0.0.0" and settings.server.port == 8080


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_drain_fits_inside_the_stop_grace_period_and_probes_exist() -> None:
    settings = load_settings(ROOT / "config" / "costproxy.yaml", {})
    for service in replicas().values():
        assert service["stop_signal"] == "SIGTERM"
        assert seconds(service["stop_grace_period"]) > settings.server.drain_timeout_s
        probe = " ".join(service["healthcheck"]["test"])
        path = re.search(r"127\.0\.0\.1:8080(/\w+)", probe)
        assert path and path.group(1) in PUBLIC_PATHS
    for name in ("redis", "postgres"):
        assert compose()["services"][name]["healthcheck"]["test"]


def test_nginx_balances_the_replicas_and_relays_streams() -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    upstream = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.MULTILINE)
    assert {host for host, _ in upstream} == set(replicas())
    assert {int(port) for _, port in upstream} == {8080}
    assert re.search(r"proxy_buffering\s+off;", conf), "SSE must not be buffered"
    body = re.search(r"client_max_body_size\s+(\d+)m;", conf)
    settings = load_settings(ROOT / "config" / "costproxy.yaml", {})
    assert body and int(body.group(1)) * 1024 * 1024 >= settings.server.max_body_bytes
    lb = compose()["services"]["lb"]
    assert any(volume.startswith("./nginx/nginx.conf:") for volume in lb["volumes"])
    listen = re.search(r"^\s*listen\s+(\d+);", conf, re.MULTILINE)
    assert listen and all(port.rsplit(":", 1)[-1] == listen.group(1) for port in lb["ports"])
    assert (DEPLOY / "nginx" / "nginx.conf").is_file()


def test_prometheus_scrapes_every_replica_with_the_shipped_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    job = config["scrape_configs"][0]
    assert job["job_name"] == "costproxy" and job["metrics_path"] in PUBLIC_PATHS
    assert {t.split(":")[0] for t in job["static_configs"][0]["targets"]} == set(replicas())
    mounts = compose()["services"]["prometheus"]["volumes"]
    rule_file = config["rule_files"][0]
    assert f"./prometheus/alerts.yml:{rule_file}:ro" in mounts
    for mount in mounts:
        assert (DEPLOY / mount.split(":")[0]).is_file()


def test_the_dockerfile_takes_the_extras_and_exposes_the_port() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'ARG EXTRAS=""' in dockerfile and 'pip install ".${EXTRAS}"' in dockerfile
    assert "EXPOSE 8080" in dockerfile and "/healthz" in dockerfile


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    has_compose = docker is not None and subprocess.run(
        [docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    if not has_compose:
        pytest.skip("docker compose is not installed here; the YAML checks above still ran")
    assert docker is not None
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                            text=True, check=False, env={**SAMPLE_SECRETS, "PATH": "/usr/bin:/bin:/usr/local/bin"})
    assert result.returncode == 0, result.stderr


def test_the_yaml_snippets_of_the_deployment_and_monitoring_pages_parse() -> None:
    from tests.docs_support import DOCS, fenced_blocks

    snippets = [block for page in ("deployment.md", "monitoring.md")
                for block in fenced_blocks((DOCS / page).read_text(encoding="utf-8"), "yaml")]
    assert len(snippets) >= 2
    parsed = [yaml.safe_load(snippet) for snippet in snippets]
    probes = next(p for p in parsed if "readinessProbe" in p)
    assert probes["readinessProbe"]["httpGet"]["path"] in PUBLIC_PATHS
    assert probes["livenessProbe"]["httpGet"]["path"] in PUBLIC_PATHS
    settings = load_settings(ROOT / "config" / "costproxy.yaml", {})
    assert probes["terminationGracePeriodSeconds"] > settings.server.drain_timeout_s
    scrape = next(p for p in parsed if "scrape_configs" in p)
    assert scrape["scrape_configs"][0]["job_name"] == "costproxy"
