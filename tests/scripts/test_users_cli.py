"""`detour user`: add prints a working proxy URL once, names are checked, a user exists once,
limits are set and removed, remove refuses an unknown name; every command has help."""

import json

from click.testing import CliRunner

from addons.users import read_users, users_path
from scripts.cli import cli


def run(home, *args, code=0):
    result = CliRunner().invoke(cli, ["--home", str(home), "user", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_add_list_limits_remove(tmp_path):
    line = run(tmp_path, "add", "alice", "--host", "gw.example", "--port", "3128").strip()
    assert line.startswith("HTTPS_PROXY=http://alice:") and line.endswith("@gw.example:3128")
    secret = line.split(":")[2].split("@")[0]
    assert read_users(users_path(tmp_path))["alice"].check(secret)
    assert "exists" in run(tmp_path, "add", "alice", code=2)
    rotated = run(tmp_path, "add", "alice", "--rotate").strip().split(":")[2].split("@")[0]
    users = read_users(users_path(tmp_path))
    assert users["alice"].check(rotated) and not users["alice"].check(secret)
    assert "user name" in run(tmp_path, "add", "bad:name", code=2)
    out = json.loads(run(tmp_path, "limits", "alice", "--rpm", "60", "--usd-per-month", "5",
                         "--json"))
    assert (out["rpm"], out["usd_per_month"], out["tokens_per_day"]) == (60, 5.0, None)
    run(tmp_path, "limits", "alice", "--rpm", "none")
    listed = json.loads(run(tmp_path, "list", "--json"))["users"]
    assert listed == {"alice": {"rpm": None, "tokens_per_day": None, "usd_per_month": 5.0}}
    assert "not a number" in run(tmp_path, "limits", "alice", "--rpm", "lots", code=2)
    assert "no user 'bob'" in run(tmp_path, "remove", "bob", code=2)
    run(tmp_path, "remove", "alice")
    assert read_users(users_path(tmp_path)) == {}  # the file stays: nobody gets in


def test_every_user_command_has_help(tmp_path):
    for command in ("add", "list", "remove", "limits"):
        assert "Example:" in run(tmp_path, command, "--help")
