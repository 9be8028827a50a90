"""`detour cert install`: prints the commands, asks, runs them only with consent. The commands
run here copy into a temporary folder; the system's trust is never touched."""

import pytest
from click.testing import CliRunner

import scripts.certs
from scripts.cli import cli
from certs.trust_store import TrustPlan


@pytest.fixture
def temp_plan(tmp_path, monkeypatch):
    """A plan whose one step copies the CA into a temporary 'store'."""
    store = tmp_path / "store"
    store.mkdir()

    def plan(ca_cert, platform, system_wide=True):
        return TrustPlan("test store", [["cp", str(ca_cert), str(store / "ca.crt")]],
                         admin=False, note="a note")

    monkeypatch.setattr(scripts.certs, "install_plan", plan)
    return store / "ca.crt"


def test_dry_run_prints_the_real_commands_for_this_system(detour, confdir):
    out = detour("cert", "install", "--dry-run").stdout
    assert f"To trust {confdir / 'mitmproxy-ca-cert.pem'}" in out
    assert "NODE_EXTRA_CA_CERTS" in out


def test_without_a_terminal_nothing_runs(detour, temp_plan):
    result = detour("cert", "install")
    assert "not run (no terminal to ask on)" in result.stderr
    assert not temp_plan.exists()


def test_a_no_changes_nothing(answer, temp_plan, monkeypatch):
    monkeypatch.setattr(scripts.certs, "can_ask", lambda: True)
    result = answer("n\n")
    assert "nothing changed" in result.stderr
    assert not temp_plan.exists()


def test_consent_runs_the_commands(answer, confdir, temp_plan, monkeypatch):
    monkeypatch.setattr(scripts.certs, "can_ask", lambda: True)
    result = answer("y\n")
    assert "the CA is trusted in the test store store" in result.stderr
    assert temp_plan.read_bytes() == (confdir / "mitmproxy-ca-cert.pem").read_bytes()


def test_yes_runs_them_without_asking(detour, temp_plan):
    detour("cert", "install", "--yes")
    assert temp_plan.exists()


def test_a_failing_command_stops_and_says_so(detour, monkeypatch, tmp_path):
    monkeypatch.setattr(scripts.certs, "install_plan", lambda *a, **k: TrustPlan(
        "test", [["false"], ["touch", str(tmp_path / "after")]], admin=False))
    result = detour("cert", "install", "--yes", expect=2)
    assert "`false` failed (exit 1); nothing after it was run" in result.stderr
    assert not (tmp_path / "after").exists()


def test_certs_install_is_the_same_command(detour):
    assert "To trust" in detour("certs", "install", "--dry-run").stdout
    assert "cert " not in detour("--help").stdout.replace("certs", "")


@pytest.fixture
def answer(home, confdir):
    """`detour cert install` with `text` typed at its question."""

    def run(text: str):
        return CliRunner().invoke(cli, ["--home", str(home), "--confdir", str(confdir), "cert",
                                        "install"], input=text, catch_exceptions=False)

    return run
