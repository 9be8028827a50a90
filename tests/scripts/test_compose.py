"""compose.yaml, read (no Docker daemon here): three detour services built from the Dockerfile
on one DETOUR_HOME volume, Redis and Postgres; the config.yaml it mounts is one detour accepts
and points at those two services with the credentials Postgres is given; every port, path and
environment variable agrees with the Dockerfile and detour's own defaults. `docker compose
config` checks it too where Compose is installed."""

import json
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from addons.config import CONFIG_NAME, parse_config
from addons.instance import WORKER_ENV
from addons.metrics import DEFAULT_PORT as METRICS_PORT
from scripts.options import DEFAULT_PORT
from tests.harness import ROOT
from tests.scripts.test_dockerfile import instructions

COMPOSE = ROOT / "compose.yaml"
DETOURS = ["detour-1", "detour-2", "detour-3"]
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolated(text: str) -> str:
    """As Compose reads it with none of the variables set: each `${NAME:-default}` its
    default."""
    return _DEFAULTED.sub(lambda m: m.group(2), text)


def dockerfile() -> dict[str, str]:
    return {keyword: rest for keyword, rest in instructions()}


def test_three_detours_redis_and_postgres(compose):
    services = compose["services"]
    assert set(services) == {*DETOURS, "redis", "postgres"}
    home = dockerfile()["ENV"].split()[0].removeprefix("DETOUR_HOME=")
    assert json.loads(dockerfile()["VOLUME"]) == [home]
    host_ports = []
    for name in DETOURS:
        s = services[name]
        assert s["build"] == "." and (ROOT / "Dockerfile").is_file()
        assert "detour-home:" + home in s["volumes"]  # one DETOUR_HOME for the three
        assert s["configs"] == [{"source": "detour-config", "target": f"{home}/{CONFIG_NAME}"}]
        host, container = s["ports"][0].split(":")
        assert int(container) == DEFAULT_PORT == int(dockerfile()["EXPOSE"])
        host_ports.append(host)
        assert f"127.0.0.1:{METRICS_PORT}/healthz" in " ".join(s["healthcheck"]["test"])
        for needed, condition in s["depends_on"].items():
            assert condition == {"condition": "service_healthy"}
            assert "healthcheck" in services[needed]
    assert len(set(host_ports)) == 3
    # each knows it is one of several on the home (addons/proxy_instance.py): one is worker 1
    assert sorted(services[n]["environment"][WORKER_ENV] for n in DETOURS) == ["1", "2", "3"]
    # the first creates the CA the others use: they start once it is healthy
    assert services["detour-2"]["depends_on"] == services["detour-3"]["depends_on"] == {
        "detour-1": {"condition": "service_healthy"}}
    assert set(services["detour-1"]["depends_on"]) == {"redis", "postgres"}
    assert set(compose["volumes"]) == {"detour-home", "redis-data", "postgres-data"}


def test_the_config_it_mounts_is_valid_and_names_the_services(compose):
    config = parse_config(interpolated(compose["configs"]["detour-config"]["content"]),
                          "compose.yaml detour-config")
    services = compose["services"]
    state = urlsplit(config.state)
    assert (state.scheme, state.hostname, state.port) == ("redis", "redis", 6379)
    assert "redis-server" in services["redis"]["command"]
    database = urlsplit(config.database)
    pg = {k: interpolated(v) for k, v in services["postgres"]["environment"].items()}
    assert (database.hostname, database.port, database.path) == (
        "postgres", 5432, "/" + pg["POSTGRES_DB"])
    assert (database.username, database.password) == (pg["POSTGRES_USER"],
                                                      pg["POSTGRES_PASSWORD"])
    # the same password variable on both sides, so setting it changes both
    raw = compose["configs"]["detour-config"]["content"]
    assert "${POSTGRES_PASSWORD:-detour}" in raw
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == \
        "${POSTGRES_PASSWORD:-detour}"
    # every key the config reads from the environment is given to every detour
    wanted = {ref.removeprefix("env:") for p in config.providers.values()
              for ref in p.api_keys if isinstance(ref, str) and ref.startswith("env:")}
    assert wanted
    for name in DETOURS:
        assert wanted <= set(services[name]["environment"])


def test_docker_compose_accepts_it(tmp_path):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("Docker Compose is not installed (docker compose version failed)")
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
