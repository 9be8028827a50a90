"""Accounts within a provider through a real mitmweb (so detour's commands are called through
its REST API): round-robin evenness, priority groups, a rate limit on one model leaving the
account's other models serving, backoff growth and its reset, an exhausted quota rested until
the vendor's reset, rests kept across a restart and ended by `detour.cooldowns.clear`, and 200
concurrent calls while accounts flap. The loopback fake answers by the key and model it gets
(`Script`)."""

import collections
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import free_port, start_proxy
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Status, Text

PASSWORD = "detour-test-accounts"
URL = "https://api.openai.com/v1/chat/completions"
HEADERS = {"authorization": "Bearer client-key-not-real"}
KEYS = ("sk-acct-one", "sk-acct-two", "sk-acct-three")

GEMINI_DAILY_QUOTA = {"error": {
    "code": 429, "status": "RESOURCE_EXHAUSTED",
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7200s"}]}}
OPENAI_NO_QUOTA = {"error": {"message": "You exceeded your current quota, please check your "
                             "plan and billing details.", "type": "insufficient_quota",
                             "param": None, "code": "insufficient_quota"}}


class Script:
    """What the fake answers, by (key, upstream model): a list of replies taken in turn
    (the last one repeats), else a text answer."""

    def __init__(self):
        self._lock = threading.Lock()
        self._plans: dict[tuple[str, str], list] = {}

    def set(self, key: str, model: str, *replies) -> None:
        with self._lock:
            self._plans[(key, model)] = list(replies)

    def reset(self) -> None:
        with self._lock:
            self._plans.clear()

    def __call__(self, received):
        key = received.headers.get("authorization", "").removeprefix("Bearer ")
        model = (received.json or {}).get("model")
        with self._lock:
            plan = self._plans.get((key, model))
            if not plan:
                return Text(f"{key} answered {model}")
            reply = plan.pop(0) if len(plan) > 1 else plan[0]
        return reply() if callable(reply) else reply


def keys_asked(fake) -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in fake.requests
            if r.route.endswith("/chat/completions")]


def config(base: str) -> str:
    one, two, three = KEYS
    return f"""
providers:
  rr: {{kind: openai, base_url: "{base}/v1", api_keys: [{one}, {two}, {three}]}}
  prio:
    kind: openai
    base_url: "{base}/v1"
    api_keys: [{{key: {one}, priority: 1}}, {{key: {two}, priority: 2}},
               {{key: {three}, disabled: true}}]
  single: {{kind: openai, base_url: "{base}/v1", api_keys: [{one}]}}
  quota: {{kind: openai, base_url: "{base}/v1", api_keys: [{two}, {three}],
           strategy: least-recently-used}}
routes:
  even: [rr/up-even]
  prio-a: [prio/up-a]
  prio-b: [prio/up-b]
  single: [single/up-single]
  quota-a: [quota/up-qa]
  quota-b: [quota/up-qb]
  flap: [rr/up-flap]
cooldown_seconds: 30
"""


@pytest.fixture(scope="module")
def script():
    return Script()


@pytest.fixture(scope="module")
def fake(script):
    with FakeOpenAI(keys=KEYS, default_reply=script) as f:
        yield f


@pytest.fixture(scope="module")
def web(confdir, tmp_path_factory, fake):
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    proxy = start_proxy(confdir, home, config(fake.base_url), web=(port, PASSWORD))
    proxy.web_port = proxy.mitm.web_port  # another, if that one was taken
    yield proxy
    proxy.mitm.stop()


@pytest.fixture(autouse=True)
def fresh(fake, script):
    fake.clear()
    script.reset()
    yield


@pytest.fixture
def client(web):
    with web.client() as c:
        yield c


def command(web_port: int, name: str, *arguments: str):
    # mitmweb's API wants its XSRF cookie echoed in a header (any matching value will do)
    r = httpx.post(f"http://127.0.0.1:{web_port}/commands/{name}",
                   json={"arguments": list(arguments)},
                   headers={"Authorization": f"Bearer {PASSWORD}", "X-XSRFToken": "d0e1f2",
                            "Cookie": "_mitmproxy_xsrf=d0e1f2"}, trust_env=False, timeout=10)
    r.raise_for_status()
    return r.json()["value"]


def cooling(web) -> dict[str, int]:
    return json.loads(command(web.web_port, "detour.status"))["cooling_down"]


def call(client, model: str) -> httpx.Response:
    return client.post(URL, json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                       headers=HEADERS)


def route(web, r: httpx.Response) -> list[dict]:
    return json.loads(web.row_of(r)["route"])


def test_round_robin_thirty_calls_land_ten_ten_ten(web, client, fake):
    for _ in range(30):
        assert call(client, "even").status_code == 200
    assert collections.Counter(keys_asked(fake)) == {k: 10 for k in KEYS}


def test_priority_groups_and_a_rate_limit_on_one_model_only(web, client, fake, script):
    one, two, _ = KEYS
    script.set(one, "up-a", Status(429, headers={"retry-after": "600"}))
    r = call(client, "prio-a")  # group 1's account is at its limit for up-a: group 2 answers
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == (
        f"{two} answered up-a")
    first = route(web, r)[0]
    assert (first["status"], first["rest"], first["rest_scope"], first["rest_s"]) == (
        429, "rate-limit", "model", 600)
    # the same account still serves up-b (its rest is for up-a only), ahead of group 2
    r = call(client, "prio-b")
    assert r.json()["choices"][0]["message"]["content"] == f"{one} answered up-b"
    assert web.row_of(r)["attempts"] == 1
    # up-a again: the resting account is not asked; group 2 is, at once
    fake.clear()
    r = call(client, "prio-a")
    assert r.status_code == 200 and keys_asked(fake) == [two]
    assert len(route(web, r)) == 1  # the resting account comes last: never reached
    assert KEYS[2] not in keys_asked(fake)  # the disabled account is never asked
    resting = cooling(web)
    assert any(k.startswith("prio/key1:") and k.endswith("@up-a") for k in resting), resting
    assert not any(k.startswith("prio/") and k.endswith("@up-b") for k in resting), resting
    command(web.web_port, "detour.cooldowns.clear", "prio")


def test_backoff_grows_while_failing_and_a_success_resets_it(web, client, fake, script):
    one = KEYS[0]
    script.set(one, "up-single", Status(500), Status(500), Status(500), Text("back"),
               Status(500), Text("fine"))
    grown = []
    for _ in range(3):  # a one-key user: asked despite its rest each time (transient)
        r = call(client, "single")
        assert r.status_code == 502
        grown.append(route(web, r)[0]["rest_s"])
    assert grown == [1, 2, 4]
    assert call(client, "single").status_code == 200  # resets the backoff
    r = call(client, "single")
    assert r.status_code == 502 and route(web, r)[0]["rest_s"] == 1
    assert call(client, "single").status_code == 200


def test_exhausted_quota_rests_until_the_vendors_reset(web, client, fake, script):
    two, three = KEYS[1], KEYS[2]
    # a daily quota of one model, with the vendor's reset: that model only, until then
    script.set(two, "up-qa", Status(429, body=GEMINI_DAILY_QUOTA))
    script.set(three, "up-qa", Status(429, body=GEMINI_DAILY_QUOTA))
    r = call(client, "quota-a")
    assert r.status_code == 429  # every account at its limits: the client is told so
    assert 7000 < float(r.headers["retry-after"]) <= 7200
    attempts = route(web, r)
    assert [(a["rest"], a["rest_scope"], a["rest_s"]) for a in attempts] == [
        ("quota", "model", 7200)] * 2
    # the other model still answers
    assert call(client, "quota-b").status_code == 200
    # a balance exhausted: the whole account, for the 15 minutes detour gives without a reset
    command(web.web_port, "detour.cooldowns.clear", "quota")
    script.reset()
    script.set(two, "up-qb", Status(429, body=OPENAI_NO_QUOTA))
    script.set(three, "up-qb", Status(429, body=OPENAI_NO_QUOTA))
    r = call(client, "quota-b")
    assert [(a["rest"], a["rest_scope"], a["rest_s"]) for a in route(web, r)] == [
        ("quota", "account", 900)] * 2
    fake.clear()
    assert call(client, "quota-a").status_code == 429  # up-qa too: nobody asked
    assert keys_asked(fake) == []
    resting = cooling(web)
    assert sorted(k.split("/")[0] for k in resting if k.startswith("quota/")) == ["quota"] * 2
    assert json.loads(command(web.web_port, "detour.cooldowns.clear", "quota"))["cleared"]
    assert call(client, "quota-a").status_code == 200


def test_rests_survive_a_restart_and_the_command_clears_them(confdir, tmp_path, fake, script):
    one = KEYS[0]
    home = tmp_path / "home"
    script.set(one, "up-single", Status(401))
    port = free_port()
    proxy = start_proxy(confdir, home, config(fake.base_url), web=(port, PASSWORD))
    try:
        with proxy.client() as c:
            r = call(c, "single")
        assert r.status_code == 502 and route(proxy, r)[0]["rest"] == "auth"
    finally:
        proxy.mitm.stop()
    with sqlite3.connect(home / "detour.db") as db:
        (key, reason), = db.execute("SELECT key, reason FROM cooldowns").fetchall()
    assert key.startswith("single/key1:") and reason == "auth"

    script.reset()  # the key works again, but detour remembers the 401
    fake.clear()
    proxy = start_proxy(confdir, home, config(fake.base_url), web=(port, PASSWORD))
    proxy.web_port = proxy.mitm.web_port  # another, if that one was taken
    try:
        assert 500 < cooling(proxy)[key] <= 600
        with proxy.client() as c:
            r = call(c, "single")  # resting for its key: not asked
            assert r.status_code == 502 and keys_asked(fake) == []
            assert route(proxy, r)[0]["skipped"] is True
            # by the name clients see: single/account 1
            cleared = json.loads(command(port, "detour.cooldowns.clear", "single/account 1"))
            assert cleared == {"cleared": [key]}
            assert cooling(proxy) == {}
            assert call(c, "single").status_code == 200
        with sqlite3.connect(home / "detour.db") as db:
            assert db.execute("SELECT count(*) FROM cooldowns").fetchone() == (0,)
    finally:
        proxy.mitm.stop()


def test_two_hundred_concurrent_calls_while_accounts_flap(web, fake, script):
    one, two, three = KEYS
    flips = {"n": 0}
    lock = threading.Lock()

    def flapping():
        with lock:
            flips["n"] += 1
            n = flips["n"]
        return Status(500) if n % 2 else Text(f"{two} answered up-flap")

    script.set(two, "up-flap", flapping)
    script.set(three, "up-flap", Status(429, headers={"retry-after": "1"}),
               Text(f"{three} answered up-flap"))

    # all 200 in flight at once: each waits for the others before it sends
    start = threading.Barrier(200, timeout=60)

    def one_call(_):
        with web.client(timeout=120) as c:
            start.wait()
            r = call(c, "flap")
            return r.status_code, r.headers.get("x-detour-id"), r.json()

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one_call, range(200)))
    assert [s for s, _, _ in results] == [200] * 200
    ids = {i for _, i, _ in results}
    assert len(ids) == 200  # one answer per call, none doubled
    deadline = time.monotonic() + 10
    while True:  # rows are written in batches
        rows = {row["flow_id"]: row for row in web.rows() if row["flow_id"] in ids}
        if len(rows) == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(rows) == 200 and all(row["status"] == 200 for row in rows.values())
    # every attempt the rows name reached the fake, and nothing else did
    tried = collections.Counter()
    for row in rows.values():
        for a in json.loads(row["route"]):
            if not a.get("skipped"):
                tried[a["account"]] += 1
    asked = collections.Counter(keys_asked(fake))
    assert sum(tried.values()) == sum(asked.values()) == sum(
        row["attempts"] for row in rows.values())
    assert len(asked) == 3 and asked[one] > 0
    # each account's state: the one that never failed never rests; what rests now is what
    # the database keeps (written within a moment)
    resting = cooling(web)
    assert not any(k.startswith("rr/key1:") for k in resting), resting
    deadline = time.monotonic() + 10
    while True:  # the database is written within a moment of a change; nothing runs now
        with sqlite3.connect(web.home / "detour.db") as db:
            kept = {k: until - time.time() for k, until in db.execute(
                "SELECT key, until FROM cooldowns WHERE key LIKE 'rr/%'")}
        now = {k for k in cooling(web) if k.startswith("rr/")}
        consistent = now <= set(kept) and {k for k, left in kept.items() if left > 1} <= now
        if consistent or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert consistent, (kept, now)
    command(web.web_port, "detour.cooldowns.clear", "rr")
    assert not any(k.startswith("rr/") for k in cooling(web))


def test_a_refused_key_rests_the_account_for_every_model(web, client, fake, script):
    one, two, _ = KEYS
    script.set(one, "up-a", Status(401))
    r = call(client, "prio-a")  # group 1's key refused: group 2 answers
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == (
        f"{two} answered up-a")
    first = route(web, r)[0]
    assert (first["status"], first["rest"], first["rest_scope"]) == (401, "auth", "account")
    # unlike a rate limit, a refused key is refused for up-b too: not asked again
    fake.clear()
    r = call(client, "prio-b")
    assert r.json()["choices"][0]["message"]["content"] == f"{two} answered up-b"
    assert keys_asked(fake) == [two]
    assert len(route(web, r)) == 1  # the resting account comes last: never reached
    resting = cooling(web)
    assert any(k.startswith("prio/key1:") and "@" not in k for k in resting), resting
    command(web.web_port, "detour.cooldowns.clear", "prio")
