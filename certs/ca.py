"""The mitmproxy CA: create it in mitmproxy's own confdir layout, or reuse the one already there.

mitmproxy signs every intercepted host's certificate with the key in `<confdir>/mitmproxy-ca.pem`
(private key + certificate). Clients trust `mitmproxy-ca-cert.pem` (the same certificate, public
only). We write exactly the files `mitmproxy.certs.CertStore.create_store` writes, so mitmdump,
mitmweb and the mitmproxy docs all find them where they expect:

    mitmproxy-ca.pem        private key (PKCS#1 "RSA PRIVATE KEY") + certificate   0600
    mitmproxy-ca.p12        private key + certificate, PKCS#12 (Windows)           0600
    mitmproxy-ca-cert.pem   certificate, PEM
    mitmproxy-ca-cert.cer   certificate, PEM (same bytes; the name Android wants)
    mitmproxy-ca-cert.p12   certificate, PKCS#12 (Windows)

(`mitmproxy-dhparam.pem` is mitmproxy's own: it writes it on load when missing, in place;
`ensure_dhparam` writes the same bytes whole first where several mitmproxies load one confdir.)

An existing CA is never regenerated, even expired: the user may have installed it in a trust
store, and a new one would silently break every client that trusts the old one.
"""

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.files import publish_exclusive, write_atomic

DEFAULT_CONFDIR = "~/.mitmproxy"
BASENAME = "mitmproxy"
KEY_SIZE = 2048  # mitmproxy's `key_size` option default

# mitmproxy's values (mitmproxy/certs.py): ten years, backdated two days for clients whose
# clock is behind.
CA_EXPIRY = datetime.timedelta(days=10 * 365)
VALIDITY_OFFSET = datetime.timedelta(days=-2)


class CAError(Exception):
    """The confdir holds CA files we cannot use as they are; the message says which and why."""


@dataclass(frozen=True, slots=True)
class CA:
    confdir: Path
    key_path: Path  # mitmproxy-ca.pem: private key + certificate; what mitmproxy signs with
    cert_path: Path  # mitmproxy-ca-cert.pem: what clients trust
    cert_pem: bytes
    subject: str  # RFC 4514, e.g. "O=mitmproxy,CN=mitmproxy"
    fingerprint_sha256: str  # "AB:CD:...", as `openssl x509 -fingerprint -sha256` prints it
    not_before: datetime.datetime  # aware, UTC
    not_after: datetime.datetime  # aware, UTC
    created: bool  # True when this call generated the CA

    @property
    def expired(self) -> bool:
        return datetime.datetime.now(datetime.UTC) >= self.not_after


def default_confdir() -> Path:
    return Path(DEFAULT_CONFDIR).expanduser()


def ca_files(confdir: Path, basename: str = BASENAME) -> dict[str, Path]:
    """The paths mitmproxy uses for its CA in `confdir`, by role."""
    return {
        "key": confdir / f"{basename}-ca.pem",
        "key_p12": confdir / f"{basename}-ca.p12",
        "cert": confdir / f"{basename}-ca-cert.pem",
        "cert_cer": confdir / f"{basename}-ca-cert.cer",
        "cert_p12": confdir / f"{basename}-ca-cert.p12",
    }


def ensure_ca(confdir: Path, *, basename: str = BASENAME, key_size: int = KEY_SIZE) -> CA:
    """Return the CA in `confdir`, creating it (and the confdir, 0700) if there is none.

    An existing `mitmproxy-ca.pem` is used as it is; only missing public files are rewritten
    from it (the private key is never read, so a passphrase-protected key works too)."""
    confdir = Path(confdir).expanduser().absolute()
    files = ca_files(confdir, basename)
    created = False
    if not files["key"].exists():
        confdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = _create(files, basename, key_size)
    certs = _load_ca_certs(files["key"])
    _restore_public_files(files, certs, basename)
    return _describe(confdir, files, certs, created)


def ensure_dhparam(confdir: Path, *, basename: str = BASENAME) -> Path:
    """`<basename>-dhparam.pem` in `confdir`, written (whole, through a rename) when missing.

    mitmproxy writes it itself when it loads a confdir without one, but in place and only after
    checking that it does not exist: mitmproxies loading one fresh confdir at once (`detour up
    --workers`) may read it while another is writing it, and such a worker gets no DH
    parameters. Written before they start, each of them only reads it."""
    from mitmproxy.certs import DEFAULT_DHPARAM  # the bytes mitmproxy would write

    path = Path(confdir).expanduser().absolute() / f"{basename}-dhparam.pem"
    if not path.exists():
        write_atomic(path, DEFAULT_DHPARAM, mode=0o644)
    return path


def _new_ca(basename: str, key_size: int) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, basename),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, basename),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    no_usage = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    cert = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(name)
        .issuer_name(name)
        .not_valid_before(now + VALIDITY_OFFSET)
        .not_valid_after(now + VALIDITY_OFFSET + CA_EXPIRY)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(key_cert_sign=True, crl_sign=True, **no_usage), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(private_key=key, algorithm=hashes.SHA256())
    )
    return key, cert


def _create(files: dict[str, Path], basename: str, key_size: int) -> bool:
    """Generate a CA and publish it. Returns False when another process published one first
    (then that one is used: two `detour` commands started together must agree on one CA)."""
    key, cert = _new_ca(basename, key_size)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    if not publish_exclusive(files["key"], key_pem + cert_pem):
        return False
    write_atomic(
        files["key_p12"],
        pkcs12.serialize_key_and_certificates(
            name=basename.encode(),
            key=key,
            cert=cert,
            cas=None,
            encryption_algorithm=serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    return True


def _load_ca_certs(key_file: Path) -> list[x509.Certificate]:
    try:
        raw = key_file.read_bytes()
        # mitmproxy signs with the first certificate; any further ones are its chain
        certs = x509.load_pem_x509_certificates(raw)
    except OSError as e:
        raise CAError(f"{key_file}: cannot read: {e.strerror}") from None
    except ValueError:
        raise CAError(
            f"{key_file}: holds no PEM certificate; mitmproxy cannot use it either"
            " (move it away to have a new CA created)"
        ) from None
    return certs


def _restore_public_files(
    files: dict[str, Path], certs: list[x509.Certificate], basename: str
) -> None:
    """Write the public CA files that are missing; check that an existing cert file is the CA
    mitmproxy actually signs with (clients trusting another certificate would all fail TLS)."""
    cert_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    for role in ("cert", "cert_cer"):
        path = files[role]
        if not path.exists():
            write_atomic(path, cert_pem, mode=0o644)
            continue
        try:
            present = x509.load_pem_x509_certificates(path.read_bytes())
        except ValueError:
            present = []
        if certs[0] not in present:
            raise CAError(
                f"{path} does not hold the CA certificate of {files['key']}, which is the one"
                " mitmproxy signs with; remove it to have it rewritten from that file"
            )
    if not files["cert_p12"].exists():
        write_atomic(
            files["cert_p12"],
            pkcs12.serialize_key_and_certificates(
                name=basename.encode(),
                key=None,
                cert=certs[0],
                cas=certs[1:] or None,
                encryption_algorithm=serialization.NoEncryption(),
            ),
            mode=0o644,
        )


def _describe(
    confdir: Path, files: dict[str, Path], certs: list[x509.Certificate], created: bool
) -> CA:
    cert = certs[0]
    return CA(
        confdir=confdir,
        key_path=files["key"],
        cert_path=files["cert"],
        cert_pem=files["cert"].read_bytes(),
        subject=cert.subject.rfc4514_string(),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        created=created,
    )
