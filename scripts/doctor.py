"""`detour doctor`: everything a working setup needs, checked in order, each failure with what
to do. Reads and probes; changes nothing (no CA is created, no proxy started)."""

import os
import platform
import shutil
import socket
import sqlite3
import ssl
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import click

from addons.config import ConfigError, config_warnings
from addons.formats import HANDLED_HOSTS
from addons.instance import running_instance
from certs.ca import CAError, ca_files, ensure_ca
from scripts.config import check_config
from scripts.options import DEFAULT_HOST, DEFAULT_PORT, Settings, output_options, pass_settings
from scripts.proxy import port_problem, proxy_settings
from scripts.status import DB_NAME, accounts_record

OK, WARN, FAIL = "ok", "warn", "fail"
MARKS = {OK: "✓", WARN: "!", FAIL: "✗"}
# the tools people run through detour: how each runtime is told to trust the CA
TOOLS = {
    "claude": "NODE_EXTRA_CA_CERTS (Bun)",
    "codex": "SSL_CERT_FILE or CODEX_CA_CERTIFICATE (Rust)",
    "gemini": "NODE_EXTRA_CA_CERTS (Node)",
    "qwen": "NODE_EXTRA_CA_CERTS (Node)",
    "cline": "NODE_EXTRA_CA_CERTS (Node)",
    "opencode": "NODE_EXTRA_CA_CERTS (Bun)",
}
PROBE_TIMEOUT = 5.0


@dataclass
class Check:
    name: str
    state: str
    detail: str
    fix: str = ""


def check_runtime() -> list[Check]:
    out = []
    version = sys.version_info
    py = f"Python {platform.python_version()} ({sys.executable})"
    out.append(Check("python", OK if version >= (3, 12) else FAIL, py,
                     "" if version >= (3, 12) else "detour needs Python 3.12 or newer"))
    try:
        mitm = metadata.version("mitmproxy")
    except metadata.PackageNotFoundError:
        return out + [Check("mitmproxy", FAIL, "not installed", "reinstall detour")]
    good = mitm.startswith("12.3")
    out.append(Check("mitmproxy", OK if good else WARN, f"mitmproxy {mitm}",
                     "" if good else "detour is built and tested for mitmproxy 12.3"))
    return out


def check_ca(settings: Settings) -> tuple[list[Check], object]:
    key = ca_files(settings.confdir)["key"]
    if not key.exists():
        return [Check("CA", FAIL, f"no mitmproxy CA in {settings.confdir}",
                      "`detour certs path` creates it (`detour up` and `detour run` do too)")], None
    try:
        ca = ensure_ca(settings.confdir)
    except CAError as e:
        return [Check("CA", FAIL, str(e), "see the message: move the bad file away")], None
    if ca.expired:
        return [Check("CA", FAIL, f"{ca.cert_path} expired on {ca.not_after:%Y-%m-%d}",
                      f"move {settings.confdir} away to have a new CA made, then trust it "
                      "again (`detour cert install`)")], ca
    return [Check("CA", OK, f"{ca.cert_path} ({ca.subject}, until {ca.not_after:%Y-%m-%d})")], ca


def check_bundle(settings: Settings, ca) -> list[Check]:
    path = settings.bundle_path
    if not path.exists():
        return [Check("bundle", FAIL, f"{path}: missing",
                      "`detour certs bundle` writes it (`detour run` and `detour env` too)")]
    if ca is not None and ca.cert_pem.strip() not in path.read_bytes():
        return [Check("bundle", FAIL, f"{path} does not hold the current CA",
                      "`detour certs bundle` rewrites it")]
    return [Check("bundle", OK, f"{path} (system CAs + detour's CA)")]


def check_tools(settings: Settings, ca, instance) -> list[Check]:
    """Each installed tool, how it is told to trust the CA, and whether a certificate the
    running proxy makes verifies against what it is given (the CA alone for Node and Bun, the
    bundle for OpenSSL and Rust)."""
    out = []
    verdicts = {}
    if instance is not None and ca is not None:
        for name, cafile in (("ca", ca.cert_path), ("bundle", settings.bundle_path)):
            verdicts[name] = probe_tls(instance.client_host, instance.port, cafile)
    for tool, how in TOOLS.items():
        path = shutil.which(tool)
        if path is None:
            continue
        which = "bundle" if tool == "codex" else "ca"
        verdict = verdicts.get(which)
        if verdict is None:
            out.append(Check(f"tool {tool}", OK, f"{path}: trusts the CA through {how} "
                             "under `detour run` (not probed: no proxy running)"))
        elif verdict == "":
            out.append(Check(f"tool {tool}", OK, f"{path}: the proxy's certificates verify "
                             f"against what it gets ({how})"))
        else:
            out.append(Check(f"tool {tool}", FAIL, f"{path}: {verdict}",
                             "the proxy runs with another CA than this confdir's: restart it "
                             "(`detour stop`, then `detour run`)"))
    if verdicts and not out:
        state = OK if all(v == "" for v in verdicts.values()) else FAIL
        out.append(Check("tls", state, "the proxy's certificates verify against the CA and "
                         "the bundle" if state == OK else "; ".join(v for v in verdicts.values()
                                                                     if v)))
    out += check_shell(settings, ca)
    return out


def check_shell(settings: Settings, ca) -> list[Check]:
    """This shell's own variables, when it sends tools through a proxy: a NODE_EXTRA_CA_CERTS
    without the CA makes every Node/Bun tool fail TLS there."""
    if not (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")) or ca is None:
        return []
    extra = os.environ.get("NODE_EXTRA_CA_CERTS", "")
    try:
        holds = ca.cert_pem.strip() in Path(extra).read_bytes() if extra else False
    except OSError:
        holds = False
    if holds:
        return [Check("shell", OK, "HTTPS_PROXY is set and NODE_EXTRA_CA_CERTS holds the CA")]
    return [Check("shell", WARN, f"HTTPS_PROXY is set but NODE_EXTRA_CA_CERTS ({extra or 'unset'})"
                  " does not hold detour's CA: Node and Bun tools in this shell fail TLS",
                  'eval "$(detour env)", or run tools with `detour run TOOL`')]


def probe_tls(host: str, port: int, cafile: Path) -> str:
    """A TLS handshake through the proxy to a host detour intercepts, verified against
    `cafile`: "" when it verifies, else why not. The proxy makes the certificate without
    dialling the vendor (connection_strategy=lazy), so this works offline."""
    target = sorted(HANDLED_HOSTS)[0]
    try:
        context = ssl.create_default_context(cafile=str(cafile))
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as raw:
            raw.sendall(f"CONNECT {target}:443 HTTP/1.1\r\nHost: {target}:443\r\n\r\n".encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = raw.recv(4096)
                if not chunk:
                    return "the proxy closed the connection after CONNECT"
                answer += chunk
            if not answer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                return f"the proxy answered CONNECT with {answer.splitlines()[0]!r}"
            with context.wrap_socket(raw, server_hostname=target):
                return ""
    except ssl.SSLCertVerificationError as e:
        return f"its certificate for {target} does not verify against {cafile}: {e.verify_message}"
    except (OSError, ssl.SSLError) as e:
        return f"TLS through the proxy failed: {e}"


def check_proxy(settings: Settings, instance) -> list[Check]:
    if instance is not None:
        return [Check("proxy", OK, f"running on {instance.client_host}:{instance.port} "
                      f"(pid {instance.pid})")]
    problem = port_problem(DEFAULT_HOST, DEFAULT_PORT)
    if problem:
        return [Check("port", WARN, f"no proxy runs for {settings.home}, and {problem} (by "
                      "another program)", "start detour on another: `detour up --port 8090` "
                      "(`detour run` picks a free one itself)")]
    return [Check("proxy", OK, f"not running; port {DEFAULT_PORT} is free for it "
                  "(`detour up`, or `detour run TOOL`)")]


def check_config_file(settings: Settings) -> tuple[list[Check], object]:
    path = settings.config_path
    if not path.exists():
        return [Check("config", WARN, f"{path}: none yet (observe mode until there is one)",
                      "`detour config init` writes a commented default")], None
    try:
        config = check_config(path)
    except ConfigError as e:
        return [Check("config", FAIL, str(e), f"fix that field in {path}; "
                      "`detour config check` checks it again")], None
    out = [Check("config", OK, f"{path}: {len(config.providers)} providers, "
                 f"{len(config.routes)} routes, {len(config.combos)} combos")]
    out += [Check("config", WARN, w) for w in config_warnings(config)]
    return out, config


def check_accounts(settings: Settings, config) -> list[Check]:
    out = []
    for a in accounts_record(config, settings.home / DB_NAME):
        name = f"account {a['provider']}/{a['account']}"
        if a["state"] == "resting":
            rest = a["rests"][0]
            model = f" for {rest['model']}" if rest["model"] else ""
            out.append(Check(name, WARN, f"{a['label']} rests{model} {rest['seconds_left']} s "
                             f"more ({rest['reason']}: {rest['cause'] or '-'})",
                             "it is asked again when its rest ends; after fixing its cause, "
                             "mitmproxy's `detour.cooldowns.clear` ends it now"))
        elif a["state"] == "unknown":  # its rests not read: it may be resting
            out.append(Check(name, WARN, f"{a['label']}: {a['why']}",
                             "make the database reachable from here"))
        else:
            out.append(Check(name, OK, f"{a['label']}: {a['state']}"))
    return out


def check_database(settings: Settings) -> list[Check]:
    db = settings.home / DB_NAME
    if not db.exists():
        return [Check("database", OK, f"{db}: not created yet (the proxy makes it)")]
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        try:
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                                 "WHERE type = 'table'")}
            rows = conn.execute("SELECT count(*) FROM usage").fetchone()[0] if (
                "usage" in tables) else 0
        finally:
            conn.close()
    except sqlite3.Error as e:
        return [Check("database", FAIL, f"{db}: {e}",
                      f"move {db} away (the proxy starts a new one)")]
    if verdict != "ok":
        return [Check("database", FAIL, f"{db}: {verdict}", f"move {db} away")]
    out = [Check("database", OK, f"{db}: {rows} usage rows")]
    if (settings.home / "usage-spill.jsonl").exists():
        out.append(Check("database", WARN, "usage-spill.jsonl holds rows a stop could not "
                         "write", "the next start imports them"))
    return out


def run_checks(settings: Settings) -> list[Check]:
    checks = check_runtime()
    instance = running_instance(settings.home)
    if instance is not None:
        settings = proxy_settings(settings, instance)  # the CA the proxy signs with
    ca_checks, ca = check_ca(settings)
    checks += ca_checks
    checks += check_bundle(settings, ca)
    checks += check_proxy(settings, instance)
    checks += check_tools(settings, ca, instance)
    config_checks, config = check_config_file(settings)
    checks += config_checks
    checks += check_accounts(settings, config)
    checks += check_database(settings)
    return checks


@click.command()
@output_options
@pass_settings
def doctor(settings: Settings, as_json: bool):
    """Check the setup: Python and mitmproxy, the CA and the bundle, whether each installed tool
    will trust the proxy, the port, config.yaml, each account, the database. Each problem says
    what to do. Exit code 1 if something fails.

    \b
    Example:
        detour doctor
    """
    checks = run_checks(settings)
    if as_json:
        import json

        click.echo(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            color = {OK: "green", WARN: "yellow", FAIL: "red"}[c.state]
            click.echo(click.style(MARKS[c.state], fg=color) + f" {c.name:<14} {c.detail}")
            if c.fix:
                click.echo(f"  {'':<10} fix: {c.fix}")
    if any(c.state == FAIL for c in checks):
        sys.exit(1)
