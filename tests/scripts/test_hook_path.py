"""The in-process hook bench runs both routes and prints its figures (no figure is checked)."""

from scripts.bench import hook_path


def test_hook_path_runs_both_routes(capsys):
    assert hook_path.main(["--calls", "3", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "translated" in out and "observe" in out and "us per whole call" in out
