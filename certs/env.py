"""The environment a shell needs to send every AI coding CLI through the proxy, and trust it.

Which variable each runtime reads (measured, see clients/README.md):
- proxy: all of them take HTTPS_PROXY; lower-case and HTTP_PROXY variants for curl and the rest.
- trust, *added* to built-in roots: NODE_EXTRA_CA_CERTS (Node and Bun: Claude Code, Gemini CLI,
  Qwen Code) and CODEX_CA_CERTIFICATE (Codex) get our CA file alone.
- trust, *replacing* the roots: SSL_CERT_FILE (OpenSSL, Python, Codex), REQUESTS_CA_BUNDLE,
  CURL_CA_BUNDLE get the bundle of system CAs + ours (bundle.py).
"""

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path

SHELLS = ("bash", "zsh", "fish", "powershell")

# The proxy's own loopback and local services (a local model server, the OAuth callback a CLI
# listens on during login) must never loop through it.
NO_PROXY = "localhost,127.0.0.1,::1"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def proxy_url(host: str, port: int) -> str:
    """`http://host:port`, with an IPv6 literal bracketed."""
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}"


def no_proxy(existing: str | None) -> str:
    """Loopback first, then whatever the user already exempts (a corporate intranet must not
    start going through the proxy just because its tools now do)."""
    extra = [h.strip() for h in (existing or "").split(",") if h.strip()]
    return ",".join([NO_PROXY] + [h for h in extra if h not in NO_PROXY.split(",")])


def client_env(proxy_url: str, ca_cert: Path, bundle: Path,
               environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    ca, roots = str(ca_cert), str(bundle)
    exempt = no_proxy(environ.get("NO_PROXY") or environ.get("no_proxy"))
    return {
        "HTTPS_PROXY": proxy_url,
        "https_proxy": proxy_url,
        "HTTP_PROXY": proxy_url,
        "http_proxy": proxy_url,
        "NO_PROXY": exempt,
        "no_proxy": exempt,
        "NODE_EXTRA_CA_CERTS": ca,
        "CODEX_CA_CERTIFICATE": ca,
        "SSL_CERT_FILE": roots,
        "REQUESTS_CA_BUNDLE": roots,
        "CURL_CA_BUNDLE": roots,
    }


# what `detour run` adds for the tool it starts: Node 22.21+/24.5+ honours HTTPS_PROXY in its
# built-in fetch only when told (a plain Node script; the coding CLIs bring their own agent)
TOOL_EXTRAS = {"NODE_USE_ENV_PROXY": "1"}


def tool_env(proxy_url: str, ca_cert: Path, bundle: Path,
             environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables `detour run` gives a tool: client_env and TOOL_EXTRAS."""
    return {**client_env(proxy_url, ca_cert, bundle, environ), **TOOL_EXTRAS}


def detect_shell(environ: Mapping[str, str] = os.environ) -> str:
    """The shell to render for, from $SHELL (or PowerShell's own variable); bash if unknown."""
    if "PSModulePath" in environ and "SHELL" not in environ:
        return "powershell"
    name = Path(environ.get("SHELL", "")).name
    if name in ("pwsh", "powershell"):
        return "powershell"
    return name if name in SHELLS else "bash"


def _posix(value: str) -> str:
    # inside '...' nothing is special but the quote itself: close, escaped quote, reopen
    return "'" + value.replace("'", "'\\''") + "'"


def _fish(value: str) -> str:
    # fish's '...' knows two escapes: \\ and \'
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _powershell(value: str) -> str:
    # a quote is doubled; PowerShell also takes the typographic single quotes as quotes
    for q in ("'", "\u2018", "\u2019", "\u201a", "\u201b"):
        value = value.replace(q, q + q)
    return "'" + value + "'"


def render_exports(env: Mapping[str, str], shell: str) -> str:
    """Lines that set `env` in `shell`, one per variable, ending with a newline:
    `export K='v'` (bash, zsh), `set -gx K 'v'` (fish), `$env:K = 'v'` (powershell)."""
    if shell not in SHELLS:
        raise ValueError(f"unknown shell {shell!r} (known: {', '.join(SHELLS)})")
    lines = []
    for key, value in env.items():
        if not _NAME.match(key):
            raise ValueError(f"not a variable name: {key!r}")
        if shell == "fish":
            lines.append(f"set -gx {key} {_fish(value)}")
        elif shell == "powershell":
            lines.append(f"$env:{key} = {_powershell(value)}")
        else:
            lines.append(f"export {key}={_posix(value)}")
    return "".join(line + "\n" for line in lines)
