"""`detour account`: add (hidden prompt or stdin), list (never a secret), rename, enable,
disable, remove, test (a real call to a loopback fake), rotate-key, and the errors a user
meets: an unknown provider, a name taken, a lost or wrong key."""

import json
import os

import pytest
from click.testing import CliRunner

from scripts.cli import cli
from tests.fakes.openai_provider import FakeOpenAI

KEY = "sk-cli-stored-key-0123456789"


@pytest.fixture(autouse=True)
def _file_key(monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")


@pytest.fixture
def detour(home, confdir):
    """`detour --home HOME ARGS...` in-process, with stdin."""

    def run(*args: str, expect: int = 0, input: str | None = None):
        result = CliRunner().invoke(cli, ["--home", str(home), "--confdir", str(confdir),
                                          *args], input=input, catch_exceptions=False)
        assert result.exit_code == expect, result.output
        return result

    return run


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(keys=[KEY]) as f:
        yield f


@pytest.fixture
def configured(home, fake):
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(
        f'providers:\n  fakeoa: {{kind: openai, base_url: "{fake.base_url}/v1", '
        f'api_keys: [env:SOME_KEY]}}\n')
    return home


def test_add_list_rename_test_remove(detour, configured, fake):
    out = detour("account", "add", "fakeoa", "--api-key", input=KEY + "\n").output
    assert "added fakeoa/key-1" in out
    rows = json.loads(detour("account", "list", "--json").output)
    assert [(r["provider"], r["name"], r["source"]) for r in rows] == [
        ("fakeoa", "env:SOME_KEY", "config.yaml"), ("fakeoa", "key-1", "detour.db")]
    table = detour("account", "list").output
    assert "key-1" in table and KEY not in table
    detour("account", "rename", "fakeoa", "key-1", "work")
    out = detour("account", "test", "fakeoa", "work").output
    assert "ok (HTTP 200" in out
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    detour("account", "disable", "fakeoa", "work")
    assert json.loads(detour("account", "list", "--json").output)[1]["state"] == "disabled"
    detour("account", "enable", "fakeoa", "work")
    fake.keys.discard(KEY)
    try:
        out = detour("account", "test", "fakeoa", "work", expect=1).output
    finally:
        fake.keys.add(KEY)
    assert "HTTP 401" in out and KEY not in out
    detour("account", "remove", "fakeoa", "work", "--yes")
    assert len(json.loads(detour("account", "list", "--json").output)) == 1


def test_mistakes_are_named(detour, configured):
    out = detour("account", "add", "nope", "--api-key", input=KEY + "\n", expect=2).output
    assert "no provider 'nope'" in out and "fakeoa" in out
    detour("account", "add", "fakeoa", "--api-key", "--name", "a", input=KEY + "\n")
    out = detour("account", "add", "fakeoa", "--api-key", "--name", "a", input="x\n",
                 expect=2).output
    assert "already has an account named 'a'" in out
    out = detour("account", "rename", "fakeoa", "zz", "b", expect=2).output
    assert "no account 'zz'" in out


def test_lost_or_wrong_key_says_what_to_do(detour, configured, home):
    detour("account", "add", "fakeoa", "--api-key", input=KEY + "\n")
    keyfile = home / "credentials.key"
    assert oct(os.stat(keyfile).st_mode & 0o777) == "0o600"
    original = keyfile.read_bytes()
    from cryptography.fernet import Fernet
    keyfile.write_bytes(Fernet.generate_key())
    out = detour("account", "test", "fakeoa", "key-1", expect=1).output
    assert "does not decrypt" in out and "remove --all" in out
    keyfile.unlink()
    out = detour("account", "add", "fakeoa", "--api-key", input=KEY + "\n", expect=2).output
    assert "is missing from" in out
    keyfile.write_bytes(original)
    out = detour("account", "rotate-key").output
    assert "1 accounts re-encrypted" in out
    assert keyfile.read_bytes() != original
    assert "ok (HTTP 200" in detour("account", "test", "fakeoa", "key-1").output
    detour("account", "remove", "--all", "--yes")
    assert len(json.loads(detour("account", "list", "--json").output)) == 1
