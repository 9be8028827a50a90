import ssl
import stat
import sys
from pathlib import Path

from cryptography import x509

import certs.bundle
from certs.bundle import SYSTEM_CA_FILES, system_ca_file, write_trust_bundle
from certs.ca import ensure_ca
from tests.certs.helpers import pem, self_signed


def roots_file(path: Path, *names: str, trailing_newline: bool = True) -> Path:
    data = b"".join(pem(self_signed(n)[1]) for n in names)
    path.write_bytes(data if trailing_newline else data.rstrip(b"\n"))
    return path


def test_bundle_is_system_roots_then_our_ca(existing_confdir, tmp_path):
    ca = ensure_ca(existing_confdir)
    system = roots_file(tmp_path / "system.pem", "Root One", "Root Two")

    dest = write_trust_bundle(ca, tmp_path / "home" / "ca-bundle.pem", system=system)

    assert dest == tmp_path / "home" / "ca-bundle.pem"
    data = dest.read_bytes()
    assert data.startswith(system.read_bytes())
    assert data.endswith(ca.cert_pem)
    subjects = [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(data)]
    assert subjects == ["CN=Root One", "CN=Root Two", "O=mitmproxy,CN=mitmproxy"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_system_file_without_final_newline_still_yields_valid_pem(existing_confdir, tmp_path):
    ca = ensure_ca(existing_confdir)
    system = roots_file(tmp_path / "system.pem", "Root", trailing_newline=False)
    dest = write_trust_bundle(ca, tmp_path / "b.pem", system=system)
    assert len(x509.load_pem_x509_certificates(dest.read_bytes())) == 2


def test_bundle_loads_in_python_ssl(existing_confdir, tmp_path):
    ca = ensure_ca(existing_confdir)
    dest = write_trust_bundle(ca, tmp_path / "b.pem")  # the real system roots
    context = ssl.create_default_context(cafile=str(dest))
    # (ssl's view, not cryptography's: some system roots have serials cryptography warns about)
    subjects = [dict(rdn[0] for rdn in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "mitmproxy", "organizationName": "mitmproxy"} in subjects
    assert len(subjects) > 10  # the system's roots are there too


def test_unchanged_bundle_is_not_rewritten_and_a_changed_one_is_replaced(
    existing_confdir, tmp_path
):
    ca = ensure_ca(existing_confdir)
    system = roots_file(tmp_path / "system.pem", "Root")
    dest = write_trust_bundle(ca, tmp_path / "out" / "b.pem", system=system)
    first = dest.stat()

    write_trust_bundle(ca, dest, system=system)
    assert (dest.stat().st_ino, dest.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    roots_file(system, "Root", "New Root")
    write_trust_bundle(ca, dest, system=system)
    assert dest.stat().st_ino != first.st_ino  # replaced by rename, never rewritten in place
    assert len(x509.load_pem_x509_certificates(dest.read_bytes())) == 3
    assert [p.name for p in dest.parent.iterdir()] == ["b.pem"]  # no temp file left


def test_system_ca_file_is_the_first_that_exists(tmp_path):
    missing, second, third = tmp_path / "missing", tmp_path / "second", tmp_path / "third"
    second.write_text("x")
    third.write_text("x")
    assert system_ca_file((missing, second, third)) == second


def test_system_ca_file_falls_back_to_certifi_then_none(tmp_path, monkeypatch):
    import certifi

    assert system_ca_file((tmp_path / "missing",)) == Path(certifi.where())
    monkeypatch.setitem(sys.modules, "certifi", None)  # makes `import certifi` fail
    assert system_ca_file((tmp_path / "missing",)) is None


def test_without_any_system_roots_the_bundle_holds_our_ca(existing_confdir, tmp_path, monkeypatch):
    monkeypatch.setattr(certs.bundle, "system_ca_file", lambda: None)
    ca = ensure_ca(existing_confdir)
    dest = write_trust_bundle(ca, tmp_path / "b.pem")
    assert x509.load_pem_x509_certificates(dest.read_bytes()) == [
        x509.load_pem_x509_certificate(ca.cert_pem)
    ]


def test_default_candidates_are_the_usual_system_paths():
    assert SYSTEM_CA_FILES[0] == Path("/etc/ssl/certs/ca-certificates.crt")
    assert Path("/etc/pki/tls/certs/ca-bundle.crt") in SYSTEM_CA_FILES
    assert Path("/etc/ssl/cert.pem") in SYSTEM_CA_FILES
