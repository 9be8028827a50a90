"""Trust bundles: the system's CAs plus ours, for runtimes that take one file of roots.

`SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE` / `CURL_CA_BUNDLE` *replace* a runtime's roots (Python's
ssl and requests, curl, Codex's Rust binary), so pointing them at the mitmproxy CA alone would
break every host the proxy tunnels without interception. Node and Bun instead *add*
`NODE_EXTRA_CA_CERTS` to their built-in roots, so they get the CA file itself (see env.py).
"""

from pathlib import Path

from certs.ca import CA
from certs.files import write_atomic

# Debian/Ubuntu/Alpine/Arch, Fedora/RHEL, macOS/BSD: the first that exists is the system's.
SYSTEM_CA_FILES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
    Path("/etc/ssl/cert.pem"),
)


def system_ca_file(candidates: tuple[Path, ...] = SYSTEM_CA_FILES) -> Path | None:
    """The system's CA bundle, else certifi's (Mozilla's roots), else None.

    Deliberately not $SSL_CERT_FILE: once `detour env` is in effect that is our own bundle."""
    for path in candidates:
        if path.is_file():
            return path
    try:
        import certifi
    except ImportError:
        return None
    return Path(certifi.where())


def bundle_bytes(ca: CA, system: Path | None) -> bytes:
    parts = []
    if system is not None:
        roots = system.read_bytes()
        parts.append(roots if roots.endswith(b"\n") or not roots else roots + b"\n")
    # PEM readers (OpenSSL, rustls-pemfile, certifi users) skip text outside BEGIN/END blocks
    parts.append(
        f"\n# detour: mitmproxy CA {ca.subject}, SHA-256 {ca.fingerprint_sha256}\n".encode()
    )
    parts.append(ca.cert_pem)
    return b"".join(parts)


def write_trust_bundle(ca: CA, dest: Path, *, system: Path | None = None) -> Path:
    """Write the system CAs (`system`, default `system_ca_file()`) followed by our CA to `dest`.

    Atomic (temp file + rename) and idempotent: an unchanged bundle is not rewritten, so a
    running tool never sees it replaced for nothing."""
    dest = Path(dest).expanduser().absolute()
    data = bundle_bytes(ca, system if system is not None else system_ca_file())
    try:
        if dest.read_bytes() == data:
            return dest
    except FileNotFoundError:
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, data, mode=0o644)
    return dest

