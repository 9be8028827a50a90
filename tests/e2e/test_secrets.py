"""No secret leaves where it belongs: one real mitmweb (with `save_stream_file`) runs every kind
of call (rerouted whole and streamed, inline and through the relay, passthrough, a non-model
call, providers that echo their key in an error answer and in an in-stream error event, a failed
call) while a client listens on mitmweb's `/updates` websocket; then every provider key and
every client credential is looked for in what the client got, the usage database (WAL files
included), mitmweb's log, its REST API and websocket, and the saved flows."""

import asyncio
import json
import os
import secrets
import threading
import time
from pathlib import Path

import httpx
import pytest
from tornado.websocket import websocket_connect

from tests.e2e.conftest import capture, free_port, start_proxy
from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Status, StreamError
from tests.harness import PROXY_VARS

PASSWORD = "detour-secrets-web"
URL = "https://api.anthropic.com/v1/messages"
# random, as real keys are: any 12 characters of one found anywhere is a leak
KEY_A = "sk-" + secrets.token_hex(20)  # multi's 1st account (env:), single's: echoed back
KEY_B = "sk-" + secrets.token_hex(20)  # multi's 2nd account (file:)
KEY_ANT = "sk-ant-" + secrets.token_hex(20)  # an Anthropic provider's (literal)
KEY_DEAD = "sk-" + secrets.token_hex(20)  # a provider that refuses connections
CLIENT_KEY = "sk-ant-client-" + secrets.token_hex(16)
CLIENT_TOKEN = "sk-ant-oat01-" + secrets.token_hex(16)  # an OAuth client's bearer token
COOKIE = secrets.token_hex(16)
ENV_NAME = "DETOUR_TEST_SCAN_KEY_A"
PROVIDER_SECRETS = {"KEY_A": KEY_A, "KEY_B": KEY_B, "KEY_ANT": KEY_ANT, "KEY_DEAD": KEY_DEAD}
CLIENT_SECRETS = {"CLIENT_KEY": CLIENT_KEY, "CLIENT_TOKEN": CLIENT_TOKEN, "COOKIE": COOKIE}
ALL_SECRETS = PROVIDER_SECRETS | CLIENT_SECRETS
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
           "cookie": f"session={COOKIE}; theme=dark"}


def leaks(data: str | bytes, secrets_: dict[str, str] = ALL_SECRETS) -> list[str]:
    """Which secrets show in `data`: whole, or their middle 12 characters."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    found = []
    for name, secret in secrets_.items():
        middle = secret[len(secret) // 2 - 6:len(secret) // 2 + 6]
        if secret in data or middle in data:
            found.append(name)
    return found


def echo_key_a(received):
    """Provider `single` and multi's first account: a 401 that quotes the key it was sent, as
    OpenAI-compatible servers do."""
    if received.headers.get("authorization") == f"Bearer {KEY_A}":
        return Status(401, message=f"Incorrect API key provided: Bearer {KEY_A}. You can find "
                                   "your API key at https://example.test/keys.")
    return None


class UpdatesRecorder:
    """Every message of mitmweb's `/updates` websocket, read in a thread of its own."""

    def __init__(self, port: int):
        self.url = f"ws://127.0.0.1:{port}/updates?token={PASSWORD}"
        self.messages: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn = None
        self.failure: BaseException | None = None

    async def _run(self):
        self._loop = asyncio.get_running_loop()
        try:
            self._conn = await websocket_connect(self.url)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self.failure = e
            self._ready.set()
            return
        self._ready.set()
        while (message := await self._conn.read_message()) is not None:
            self.messages.append(message)

    def start(self) -> "UpdatesRecorder":
        self._thread.start()
        assert self._ready.wait(10), "mitmweb's websocket did not open"
        if self.failure:
            raise self.failure
        return self

    def stop(self) -> None:
        if self._conn is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._conn.close)
        self._thread.join(10)

    def flows(self, kind: str) -> list[dict]:
        out = []
        for m in self.messages:
            msg = json.loads(m)
            if msg.get("type") == kind:
                out.append(msg["payload"]["flow"])
        return out


class Run:
    """What one mitmweb run left behind."""

    responses: dict[str, "httpx.Response"]
    ws: list[str]
    ws_added: list[dict]
    rest_flows: list[dict]
    rest_bodies: dict[str, bytes]
    home_files_running: dict[str, bytes]
    home_files_after: dict[str, bytes]
    rows: list[dict]
    log: str
    saved: bytes
    saved_flows: list
    anthropic_seen: list
    openai_seen: list


@pytest.fixture(scope="module")
def run(confdir, tmp_path_factory) -> Run:
    from mitmproxy import io as mitmio

    tmp = tmp_path_factory.mktemp("secrets")
    key_file = tmp / "keys" / "multi-b"
    key_file.parent.mkdir()
    key_file.write_text(KEY_B + "\n")
    flows_file = tmp / "flows.mitm"
    home = tmp / "home"
    web_port = free_port()
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env[ENV_NAME] = KEY_A
    out = Run()
    with FakeOpenAI(keys={KEY_A, KEY_B}, default_reply=echo_key_a) as openai_fake, \
            FakeAnthropic(keys={KEY_ANT, CLIENT_KEY, CLIENT_TOKEN}) as vendor:
        base = f"{openai_fake.base_url}/v1"
        config = f"""
providers:
  multi: {{kind: openai, base_url: "{base}", api_keys: ["env:{ENV_NAME}", "file:{key_file}"]}}
  single: {{kind: openai, base_url: "{base}", api_keys: ["env:{ENV_NAME}"]}}
  single2: {{kind: openai, base_url: "{base}", api_keys: ["env:{ENV_NAME}"]}}
  ant: {{kind: anthropic, base_url: "{vendor.base_url}", api_keys: [{KEY_ANT}]}}
  dead: {{kind: openai, base_url: "http://127.0.0.1:{free_port()}/v1", api_keys: [{KEY_DEAD}],
          timeouts: {{connect: 2}}}}
routes:
  rerouted: [multi/fake-model]
  echo-only: [single/fake-model]
  echo-only-2: [single2/fake-model]
  ant-error: [ant/claude-fake]
  dead-only: [dead/m]
  "*": [passthrough]
vendors:
  api.anthropic.com: "{vendor.base_url}"
"""
        proxy = start_proxy(confdir, home, config, web=(web_port, PASSWORD), env=env,
                            extra=["--set", f"save_stream_file={flows_file}"])
        web_port = proxy.mitm.web_port  # another, if that one was taken
        recorder = None
        try:
            recorder = UpdatesRecorder(web_port).start()
            out.responses = _calls(proxy, openai_fake, vendor)
            out.rows = proxy.rows(expect=len(out.responses) - 1)  # the non-model call: none
            out.rest_flows, out.rest_bodies = _rest(web_port, len(out.responses), recorder)
            out.home_files_running = _files(home)
        finally:
            if recorder is not None:
                recorder.stop()
            proxy.mitm.stop()
        out.anthropic_seen = vendor.requests
        out.openai_seen = openai_fake.requests
    out.ws = recorder.messages
    out.ws_added = recorder.flows("flows/add")
    out.home_files_after = _files(home)
    out.log = proxy.mitm.text
    out.saved = flows_file.read_bytes()
    with flows_file.open("rb") as f:
        out.saved_flows = list(mitmio.FlowReader(f).stream())
    return out


def _calls(proxy, openai_fake: FakeOpenAI, vendor: FakeAnthropic) -> dict:
    text = capture("text")
    r = {}
    with proxy.client() as c:
        def post(name, model, stream, headers=HEADERS):
            r[name] = c.post(URL, json=dict(text, model=model, stream=stream), headers=headers)

        # multi's 1st account echoes its key in a 401; its 2nd answers (then the 1st rests)
        post("rerouted-whole", "rerouted", False)
        post("rerouted-stream", "rerouted", True)
        openai_fake.enqueue(StreamError(after=2, kind="server_error",
                                        message=f"upstream refused key {KEY_B} mid-stream"))
        post("stream-error-translated", "rerouted", True)
        vendor.enqueue(StreamError(after=2, kind="authentication_error",
                                   message=f"invalid x-api-key {KEY_ANT}"))
        post("stream-error-same-format", "ant-error", True)
        post("echo-whole", "echo-only", False)
        post("echo-stream", "echo-only-2", True)  # `single` rests after its 401
        post("failed", "dead-only", False)
        post("passthrough-whole", "claude-haiku-4-5", False)
        post("passthrough-stream", "claude-haiku-4-5", True,
             headers={"authorization": f"Bearer {CLIENT_TOKEN}",
                      "anthropic-version": "2023-06-01", "cookie": f"session={COOKIE}"})
        r["non-model"] = c.get("https://api.anthropic.com/api/claude_code/settings",
                               headers=HEADERS)
    return r


def _rest(web_port: int, n: int, recorder: UpdatesRecorder) -> tuple[list[dict], dict]:
    """mitmweb's flows once all are answered (and their last update published), and each
    flow's response body as the REST API serves it."""
    auth = {"Authorization": f"Bearer {PASSWORD}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", headers=auth, trust_env=False,
                      timeout=10) as web:
        deadline = time.monotonic() + 15
        while True:
            flows = web.get("/flows").json()
            done = [f for f in flows if f.get("response") or f.get("error")]
            updated = {f["id"] for f in recorder.flows("flows/update")
                       if f.get("response") or f.get("error")}
            if len(done) == n and {f["id"] for f in done} <= updated:
                break
            assert time.monotonic() < deadline, json.dumps(flows)[:3000]
            time.sleep(0.1)
        bodies = {f["id"]: web.get(f"/flows/{f['id']}/response/content.data").content
                  for f in flows}
    return flows, bodies


def _files(home: Path) -> dict[str, bytes]:
    """Everything detour wrote to DETOUR_HOME (config.yaml is the operator's own)."""
    return {p.name: p.read_bytes() for p in home.iterdir()
            if p.is_file() and p.name != "config.yaml"}


# ---------------------------------------------------------------- the calls did what they should


def test_every_kind_of_call_was_made(run):
    status = {name: resp.status_code for name, resp in run.responses.items()}
    assert status == {"rerouted-whole": 200, "rerouted-stream": 200,
                      "stream-error-translated": 200, "stream-error-same-format": 200,
                      "echo-whole": 502, "echo-stream": 502, "failed": 502,
                      "passthrough-whole": 200, "passthrough-stream": 200, "non-model": 404}
    assert b"Hello from the fake provider" in run.responses["rerouted-whole"].content
    for name in ("stream-error-translated", "stream-error-same-format"):
        assert b"event: error" in run.responses[name].content


def test_passthrough_still_reaches_the_vendor_with_the_clients_credentials(run):
    sent = [r for r in run.anthropic_seen if r.json and r.json.get("model") == "claude-haiku-4-5"]
    assert [r.headers.get("x-api-key") for r in sent] == [CLIENT_KEY, None]
    assert sent[1].headers["authorization"] == f"Bearer {CLIENT_TOKEN}"
    assert all(f"session={COOKIE}" in r.headers["cookie"] for r in sent)
    other = [r for r in run.anthropic_seen if r.path == "/api/claude_code/settings"]
    assert len(other) == 1 and other[0].headers["x-api-key"] == CLIENT_KEY
    assert f"session={COOKIE}" in other[0].headers["cookie"]


# ---------------------------------------------------------------- provider text is scrubbed


def test_a_key_echoed_in_an_error_never_reaches_the_client(run):
    for name, resp in run.responses.items():
        assert not leaks(resp.content), name
        assert not leaks(json.dumps(dict(resp.headers))), name
    for name in ("echo-whole", "echo-stream"):
        message = run.responses[name].json()["error"]["message"]
        assert "Incorrect API key provided: Bearer [redacted]" in message
    assert "upstream refused key [redacted] mid-stream" in \
        run.responses["stream-error-translated"].text
    assert "invalid x-api-key [redacted]" in run.responses["stream-error-same-format"].text


def test_usage_rows_hold_no_key_but_say_what_failed(run):
    assert not leaks(json.dumps(run.rows))
    errors = " ".join(str(r["error"]) + r["route"] for r in run.rows)
    assert "Incorrect API key provided: Bearer [redacted]" in errors
    assert "[redacted] mid-stream" in errors and "invalid x-api-key [redacted]" in errors


def test_clients_are_told_no_account_label(run):
    """`x-detour-route` names the provider and the account's place in its list; the operator's
    database keeps the label (an env var's name, a key file's path), but no secret."""
    routes = {name: resp.headers.get("x-detour-route") for name, resp in run.responses.items()}
    assert routes["rerouted-whole"] == routes["rerouted-stream"] == "multi/account 2"
    assert routes["stream-error-same-format"] == "ant/account 1"
    for name, resp in run.responses.items():
        for part in (ENV_NAME, "file:", "env:", "key1:", "multi-b"):
            assert part not in resp.headers.get("x-detour-route", ""), name
    for name in ("echo-whole", "echo-stream", "failed"):  # nor does an error message
        message = run.responses[name].json()["error"]["message"]
        assert ENV_NAME not in message and "key1:" not in message, message
        assert "/account 1" in message
    accounts = {a["account"] for r in run.rows for a in json.loads(r["route"]) if "account" in a}
    assert f"env:{ENV_NAME}" in accounts and any(a.startswith("file:") for a in accounts)
    hashed = [a for a in accounts if a.startswith("key")]  # literal keys: a short hash only
    assert hashed and all(len(a.partition(":")[2]) == 8 for a in hashed)


# ---------------------------------------------------------------- the secret scan


def test_no_secret_in_detour_home(run):
    assert "detour.db" in run.home_files_running
    for files in (run.home_files_running, run.home_files_after):
        for name, data in files.items():
            assert not leaks(data), name


def test_no_secret_in_the_log(run):
    assert "[redacted]" in run.log  # the echoed key was logged, scrubbed
    assert not leaks(run.log)


def test_no_secret_in_saved_flows(run):
    assert len(run.saved_flows) == len(run.responses)
    assert not leaks(run.saved)
    for flow in run.saved_flows:
        for name in ("x-api-key", "authorization", "cookie"):
            if name in flow.request.headers:
                assert flow.request.headers[name].endswith("[redacted]")


def test_no_secret_in_mitmwebs_rest_api(run):
    assert len(run.rest_flows) == len(run.responses)
    assert not leaks(json.dumps(run.rest_flows))
    for flow_id, body in run.rest_bodies.items():
        assert not leaks(body), flow_id
    comments = " ".join(f["comment"] for f in run.rest_flows)
    assert "Incorrect API key provided: Bearer [redacted]" in comments


def test_no_secret_in_mitmwebs_live_updates(run):
    """`flows/add` is published at the View's requestheaders, before the request hook: the
    credentials must be off the flow from the first hook on."""
    assert len(run.ws_added) == len(run.responses)
    added_headers = [dict(f["request"]["headers"]) for f in run.ws_added]
    assert all(h.get("x-api-key", h.get("authorization", "")).endswith("[redacted]")
               for h in added_headers)
    for message in run.ws:
        assert not leaks(message), message[:500]

