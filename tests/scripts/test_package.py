"""The wheel as a user gets it (`uv tool install`, `pipx install`): built from this checkout,
installed into a clean venv (its dependencies at the locked versions, from uv's cache or the
package index: `--offline` fails on a fresh machine, whose cache holds wheels by URL only),
it gives a working `detour`, installs one top-level package (`detour`) and no generic names,
ships no benchmarks (they import tests/), and `detour up` runs the proxy from it."""

import os
import signal
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from tests.harness import ROOT, free_port

pytestmark = pytest.mark.slow

GENERIC = {"addons", "translators", "certs", "scripts", "tests"}
TIMEOUT = 120


def find_uv() -> str | None:
    """uv as CI calls it ($UV, the `uv` module of the base Python), else on PATH."""
    candidates = [os.environ.get("UV")]
    try:
        found = subprocess.run([sys._base_executable, "-c", "import uv; print(uv.find_uv_bin())"],
                               capture_output=True, text=True, timeout=30)
        candidates.append(found.stdout.strip() if found.returncode == 0 else None)
    except (OSError, subprocess.TimeoutExpired):
        pass
    import shutil

    candidates.append(shutil.which("uv"))
    for uv in filter(None, candidates):
        try:
            if subprocess.run([uv, "--version"], capture_output=True, timeout=30).returncode == 0:
                return uv
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    uv = find_uv()
    if uv is None:
        pytest.skip("no uv to build and install the wheel with")
    tmp = tmp_path_factory.mktemp("package")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}

    def run(*args, **kw):
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=env,
                              **kw)
        assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
        return done

    run(uv, "build", "--wheel", "--out-dir", str(tmp / "dist"), str(ROOT))
    [wheel] = (tmp / "dist").glob("detour-*.whl")
    requirements = tmp / "requirements.txt"
    requirements.write_text(run(uv, "export", "--frozen", "--no-dev", "--no-emit-project",
                                "--no-hashes", "-q", cwd=ROOT).stdout)
    venv = tmp / "venv"
    run(uv, "venv", "-q", str(venv), "-p", sys._base_executable)
    run(uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
        "-r", str(requirements), str(wheel))
    return wheel, venv, tmp


def test_the_wheel_holds_one_detour_package_and_no_benchmarks(installed):
    wheel, venv, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"detour"}, top
    assert "detour/__init__.py" in names
    assert "detour/addons/router.py" in names and "detour/translators/canonical.py" in names
    assert not [n for n in names if n.startswith("detour/scripts/bench")]
    site = next((venv / "lib").glob("python*/site-packages"))
    assert not GENERIC & {p.name for p in site.iterdir()}


def test_detour_help_runs_from_a_neutral_folder(installed):
    _, venv, tmp = installed
    done = subprocess.run([str(venv / "bin" / "detour"), "--help"], capture_output=True,
                          text=True, timeout=60, cwd=tmp)
    assert done.returncode == 0, done.stderr
    for command in ("run", "up", "status", "doctor", "stop", "env"):
        assert f"  {command} " in done.stdout
    # the generic names are not importable in that venv: only detour's own process sees them
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import addons"],
                           capture_output=True, text=True, timeout=60, cwd=tmp)
    assert "No module named 'addons'" in probe.stderr


def test_detour_up_runs_the_proxy_from_the_installed_package(installed):
    _, venv, tmp = installed
    port = free_port()
    home, confdir = tmp / "home", tmp / "confdir"
    proc = subprocess.Popen([str(venv / "bin" / "detour"), "--home", str(home), "--confdir",
                             str(confdir), "up", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp,
                            env={**os.environ, "HOME": str(tmp)})
    output = bytearray()
    listening = threading.Event()

    def pump():
        for line in iter(proc.stdout.readline, b""):
            output.extend(line)
            if f"listening at 127.0.0.1:{port}".encode() in line:
                listening.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert listening.wait(60), output.decode(errors="replace")
        text = output.decode(errors="replace")
        assert f"detour: proxy on http://127.0.0.1:{port}" in text
        router = next((venv / "lib").glob("python*/site-packages")) / "detour/addons/router.py"
        assert f"Loading script {router}" in text
        deadline = time.monotonic() + 20
        while not (home / "proxy.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (home / "proxy.json").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        proc.stdout.close()
    assert not (home / "proxy.json").exists()  # a clean stop removes it
