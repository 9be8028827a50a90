"""`detour account import`: the CLIs' own credential files (fixtures in
tests/data/cli-credentials, the shapes Claude Code, Codex, Gemini CLI and Qwen Code write) are
shown first (never a token), then stored encrypted; a login already held is not imported
twice; the files are left untouched."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from addons.credentials.store import AccountStore
from scripts.cli import cli

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "cli-credentials"
PLACES = {"claude": ".claude/.credentials.json", "codex": ".codex/auth.json",
          "gemini": ".gemini/oauth_creds.json", "qwen": ".qwen/oauth_creds.json"}


@pytest.fixture
def user_home(tmp_path, monkeypatch):
    home = tmp_path / "user"
    for vendor, place in PLACES.items():
        target = home / place
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / vendor / Path(place).name, target)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.delenv("CODEX_HOME", raising=False)
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    return home


def detour(home, *args, input=None, expect=0):
    result = CliRunner().invoke(cli, ["--home", str(home), *args], input=input,
                                catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def secrets_of(vendor: str) -> list[str]:
    data = json.loads((FIXTURES / vendor / Path(PLACES[vendor]).name).read_text())
    if vendor == "claude":
        return [data["claudeAiOauth"]["accessToken"], data["claudeAiOauth"]["refreshToken"]]
    if vendor == "codex":
        return [data["tokens"]["access_token"], data["tokens"]["refresh_token"]]
    return [data["access_token"], data["refresh_token"]]


def test_import_shows_then_stores_each_cli_login(tmp_path, user_home):
    detour_home = tmp_path / "detour"
    before = {p: (user_home / p).read_bytes() for p in PLACES.values()}
    out = detour(detour_home, "account", "import", input="n\n")
    assert "nothing imported" in out
    for vendor in PLACES:
        for secret in secrets_of(vendor):
            assert secret not in out
    assert "codex-user@example.com" in out and "max" in out
    assert AccountStore(detour_home / "detour.db").accounts() == []

    out = detour(detour_home, "account", "import", "--yes")
    assert out.count("imported ") == 4
    store = AccountStore(detour_home / "detour.db")
    got = {a.vendor: a for a in store.accounts(secrets=True)}
    assert set(got) == set(PLACES)
    for vendor in PLACES:
        assert [got[vendor].secrets["access_token"], got[vendor].secrets["refresh_token"]] \
            == secrets_of(vendor)
        assert got[vendor].provider == vendor and got[vendor].name == "imported-1"
    assert (got["codex"].plan, got["codex"].account_id, got["codex"].email) == (
        "pro", "acct-fixture-77", "codex-user@example.com")
    assert got["claude"].plan == "max" and got["claude"].expires_at == 1893456000.0
    assert got["qwen"].project_id == "portal.qwen.ai"
    assert got["gemini"].email == "gemini-user@example.com"

    # a second import finds them held already
    out = detour(detour_home, "account", "import", "codex", "--yes")
    assert "already held as codex/imported-1" in out and "imported codex" not in out
    assert {p: (user_home / p).read_bytes() for p in PLACES.values()} == before


def test_nothing_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.delenv("CODEX_HOME", raising=False)
    assert "no CLI login found for qwen" in detour(tmp_path / "d", "account", "import", "qwen")
