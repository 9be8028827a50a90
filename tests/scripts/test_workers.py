"""`detour up --workers 2`: two mitmdump processes on one port (SO_REUSEPORT) serve the client
connections between them, their lines prefixed `[worker N]`, their usage rows in the one
detour.db; SIGINT stops both cleanly. And --workers with --web is refused."""

import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import sqlite_utils
from click.testing import CliRunner

from scripts.cli import cli
from tests.fakes.openai_provider import FakeOpenAI
from tests.harness import free_port, stop_process

URL = "https://api.openai.com/v1/chat/completions"
DETOUR = Path(sys.executable).parent / "detour"  # the console script of this venv


def test_two_workers_share_one_port(tmp_path):
    with FakeOpenAI(keys=["sk-workers"]) as fake:
        home = tmp_path / "home"
        home.mkdir()
        (home / "config.yaml").write_text(
            f'providers:\n  f: {{kind: openai, base_url: "{fake.base_url}/v1", '
            f'api_keys: [sk-workers]}}\nroutes:\n  "*": [f/m]\n')
        port = free_port()
        proc = subprocess.Popen(
            [str(DETOUR), "--home", str(home), "--confdir",
             str(tmp_path / "conf"), "up", "--port", str(port), "--workers", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = bytearray()
        reader = threading.Thread(target=lambda: [out.extend(line) for line in
                                                  iter(proc.stdout.readline, b"")], daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while out.count(b"proxy listening at") < 2:
                assert proc.poll() is None and time.monotonic() < deadline, out.decode()
                time.sleep(0.05)
            ctx = ssl.create_default_context(cafile=str(tmp_path / "conf" /
                                                        "mitmproxy-ca-cert.pem"))
            ids = []
            for _ in range(16):  # a new connection each: the kernel picks a worker for each
                with httpx.Client(proxy=f"http://127.0.0.1:{port}", verify=ctx,
                                  trust_env=False, timeout=20) as c:
                    r = c.post(URL, json={"model": "x",
                                          "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-detour-id"])
        finally:
            code = stop_process(proc, signal.SIGINT, reader)
        text = out.decode(errors="replace")
        assert code == 0, text
        served = set(re.findall(r"\[worker (\d)\] .*client connect", text))
        assert served == {"1", "2"}, text[-3000:]  # 16 connections never all hash to one
        rows = list(sqlite_utils.Database(home / "detour.db")["usage"].rows)
        assert sorted(row["flow_id"] for row in rows) == sorted(ids)  # both flushed on SIGINT


def test_workers_refuse_web(tmp_path):
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "up", "--workers", "2", "--web"])
    assert result.exit_code == 2 and "drop --web" in result.output
