"""The `detour` group: every command documented with an example, the global options."""

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from scripts.cli import cli


def walk(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


COMMANDS = [(), *(path for path, _ in walk(cli))]


def test_the_expected_commands_exist():
    assert set(COMMANDS) >= {
        (),
        ("up",),
        ("env",),
        ("certs",),
        ("certs", "path"),
        ("certs", "show"),
        ("certs", "bundle"),
        ("config",),
        ("config", "path"),
        ("config", "check"),
        ("config", "init"),
    }


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "detour")
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(
        cli, [*path, "--help"], prog_name="detour", catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    usage = " ".join(["detour", *path])
    assert result.output.startswith(f"Usage: {usage} ")
    help_text = result.output.split("Options:")[0]
    assert "Example:" in help_text
    example = help_text.split("Example:")[1]
    assert "detour" in example, f"the example of `{usage}` does not run detour"


def test_home_comes_from_the_option_then_detour_home_then_the_default(tmp_path):
    def config_path(*args, env=None):
        result = CliRunner().invoke(cli, [*args, "config", "path"], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return Path(result.output.strip())

    user_home = Path.home()  # the fixture's HOME, inside tmp_path
    assert tmp_path in user_home.parents
    assert config_path() == user_home / ".detour" / "config.yaml"
    assert config_path(env={"DETOUR_HOME": str(tmp_path / "e")}) == tmp_path / "e" / "config.yaml"
    assert (
        config_path("--home", str(tmp_path / "o"), env={"DETOUR_HOME": str(tmp_path / "e")})
        == tmp_path / "o" / "config.yaml"
    )


def test_confdir_defaults_to_mitmproxys(tmp_path):
    result = CliRunner().invoke(cli, ["certs", "path"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(Path.home() / ".mitmproxy" / "mitmproxy-ca-cert.pem")


def test_version():
    result = CliRunner().invoke(cli, ["--version"], catch_exceptions=False)
    assert result.exit_code == 0 and "version" in result.output
