from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from scripts.cli import cli


@pytest.fixture(autouse=True)
def _no_real_home(tmp_path, monkeypatch):
    """Never touch the real ~/.detour or ~/.mitmproxy, even through a default."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("DETOUR_HOME", raising=False)
    monkeypatch.setenv("SHELL", "/bin/bash")


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def confdir(tmp_path) -> Path:
    return tmp_path / "confdir"


@pytest.fixture
def detour(home, confdir):
    """Run `detour --home HOME --confdir CONFDIR ARGS...` in-process."""

    def run(*args: str, expect: int | None = 0, env: dict | None = None) -> Result:
        result = CliRunner().invoke(
            cli,
            ["--home", str(home), "--confdir", str(confdir), *args],
            prog_name="detour",
            catch_exceptions=False,
            env=env,
        )
        if expect is not None:
            assert result.exit_code == expect, result.output
        return result

    return run
