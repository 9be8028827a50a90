"""A DETOUR_HOME (or confdir) detour cannot write ends `detour up` / `detour env` with one line
naming the folder and the cause, exit code 2, never a traceback (issue 12). Root ignores file
modes, so the folders here are unwritable for root too: under a file, or on a read-only mount."""

import contextlib
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import scripts.proxy
from scripts.cli import cli


@pytest.fixture(autouse=True)
def no_exec(monkeypatch) -> list:
    """`up` must never become mitmproxy here: record what it would run instead."""
    calls: list = []
    monkeypatch.setattr(scripts.proxy.os, "execv", lambda path, argv: calls.append(argv))
    monkeypatch.setattr(scripts.proxy, "port_problem", lambda host, port: None)  # 8080 may be taken
    return calls


def detour(home: Path, confdir: Path, *args: str):
    return CliRunner().invoke(cli, ["--home", str(home), "--confdir", str(confdir), *args],
                              prog_name="detour", catch_exceptions=False)


def assert_one_line_error(result, *parts: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: ")
    for part in parts:
        assert part in line, line


@contextlib.contextmanager
def read_only_mount(mountpoint: Path, prepare=None):
    """A tmpfs at `mountpoint`, filled by `prepare(mountpoint)`, then remounted read-only."""
    mountpoint.mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
                       check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a read-only tmpfs (needs root and CAP_SYS_ADMIN): {e}")
    try:
        if prepare:
            prepare(mountpoint)
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True, timeout=30)
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=30)


def test_up_with_home_under_a_file(tmp_path, no_exec):
    (tmp_path / "file").write_text("not a folder")
    home = tmp_path / "file" / "home"
    result = detour(home, tmp_path / "confdir", "up")
    assert_one_line_error(result, f"DETOUR_HOME {home} cannot be used",
                          f"{tmp_path / 'file'} is a file, not a folder")
    assert no_exec == []


def test_up_with_home_on_a_read_only_filesystem(tmp_path, no_exec):
    with read_only_mount(tmp_path / "ro") as home:
        result = detour(home, tmp_path / "confdir", "up")
    assert_one_line_error(result, f"DETOUR_HOME {home} cannot be used",
                          f"Read-only file system: {home}/config.yaml")
    assert no_exec == []


def test_up_with_a_configured_home_on_a_read_only_filesystem(tmp_path, no_exec):
    # config.yaml is there and valid, but detour.db and the trust bundle cannot be written
    def configured(root: Path) -> None:
        (root / "home").mkdir()
        (root / "home" / "config.yaml").write_text("routes: {'*': [passthrough]}\n")

    with read_only_mount(tmp_path / "ro", configured) as root:
        result = detour(root / "home", tmp_path / "confdir", "up")
    assert_one_line_error(result, f"DETOUR_HOME {root / 'home'} cannot be used",
                          f"Read-only file system: {root / 'home'}")
    assert ".detour-write-check-" not in result.output
    assert no_exec == []


def test_up_and_env_with_a_read_only_confdir(tmp_path, no_exec):
    with read_only_mount(tmp_path / "ro") as confdir:
        up = detour(tmp_path / "home", confdir, "up")
        env = detour(tmp_path / "home", confdir, "env")
    for result in (up, env):
        assert_one_line_error(result, "cannot prepare the CA and trust bundle",
                              f"Read-only file system: {confdir}")
    assert no_exec == []
