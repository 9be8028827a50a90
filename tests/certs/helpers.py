"""Small certificate helpers for the certs tests."""

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(cn: str, *, days: int = 30, start_days_ago: int = 1, key=None):
    """A small EC CA certificate for tests: (key, cert)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=start_days_ago)
    cert = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(name)
        .issuer_name(name)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """name -> (bytes, mtime_ns, inode) of every file: proves a directory was left alone."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(directory.iterdir())
    }
