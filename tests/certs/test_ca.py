import datetime
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import certs.ca
from certs.ca import CA_EXPIRY, CAError, ca_files, ensure_ca, ensure_dhparam
from tests.certs.helpers import pem, self_signed, snapshot

MITMPROXY_FILES = {
    "mitmproxy-ca.pem",
    "mitmproxy-ca.p12",
    "mitmproxy-ca-cert.pem",
    "mitmproxy-ca-cert.cer",
    "mitmproxy-ca-cert.p12",
}


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_mitmproxys_layout_with_private_files_0600(tmp_path):
    confdir = tmp_path / "a" / "confdir"
    ca = ensure_ca(confdir)

    assert ca.created
    assert {p.name for p in confdir.iterdir()} == MITMPROXY_FILES
    assert mode(confdir) == 0o700
    assert mode(confdir / "mitmproxy-ca.pem") == 0o600
    assert mode(confdir / "mitmproxy-ca.p12") == 0o600
    assert mode(confdir / "mitmproxy-ca-cert.pem") == 0o644
    assert ca.cert_path == confdir / "mitmproxy-ca-cert.pem"
    assert ca.key_path == confdir / "mitmproxy-ca.pem"
    assert ca.cert_pem == ca.cert_path.read_bytes()
    assert ca.cert_pem == (confdir / "mitmproxy-ca-cert.cer").read_bytes()
    # mitmproxy writes the key in the traditional (PKCS#1) form, followed by the certificate
    raw = ca.key_path.read_bytes()
    first_line = raw.split(b"\n", 1)[0]
    assert first_line == b"-----BEGIN %s-----" % b" ".join([b"RSA", b"PRIVATE", b"KEY"])
    assert raw.endswith(ca.cert_pem)


def test_certificate_is_what_mitmproxy_makes(tmp_path):
    ca = ensure_ca(tmp_path)
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)

    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537
    assert cert.public_key() == key.public_key()
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mitmproxy"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "mitmproxy"
    assert ca.subject == "O=mitmproxy,CN=mitmproxy"
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)

    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature and not ku.value.key_encipherment
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical and list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())

    # ten years, backdated two days for clients with a slow clock
    now = datetime.datetime.now(datetime.UTC)
    assert abs(cert.not_valid_before_utc - (now - datetime.timedelta(days=2))).total_seconds() < 60
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == CA_EXPIRY
    assert ca.not_after == cert.not_valid_after_utc and not ca.expired
    assert ca.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert len(ca.fingerprint_sha256) == 32 * 3 - 1


def test_pkcs12_files_hold_what_their_names_say(tmp_path):
    ca = ensure_ca(tmp_path)
    cert = x509.load_pem_x509_certificate(ca.cert_pem)

    # the same shapes as mitmproxy's: key + cert named "mitmproxy"; a lone cert named "mitmproxy"
    with_key = pkcs12.load_pkcs12((tmp_path / "mitmproxy-ca.p12").read_bytes(), None)
    assert with_key.key.public_key() == cert.public_key()
    assert with_key.cert.certificate == cert and with_key.cert.friendly_name == b"mitmproxy"
    assert with_key.additional_certs == []

    cert_only = pkcs12.load_pkcs12((tmp_path / "mitmproxy-ca-cert.p12").read_bytes(), None)
    assert cert_only.key is None and cert_only.cert is None
    assert [(c.certificate, c.friendly_name) for c in cert_only.additional_certs] == [
        (cert, b"mitmproxy")
    ]


def test_mitmproxy_loads_our_ca_and_signs_leaves_with_it(existing_confdir):
    from mitmproxy.certs import CertStore

    ca = ensure_ca(existing_confdir)
    before = snapshot(existing_confdir)

    store = CertStore.from_store(existing_confdir, "mitmproxy", 2048)

    assert store.default_ca.fingerprint().hex(":").upper() == ca.fingerprint_sha256
    entry = store.get_cert("api.anthropic.com", [x509.DNSName("api.anthropic.com")])
    leaf = entry.cert.to_cryptography()
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    assert leaf.issuer == x509.load_pem_x509_certificate(ca.cert_pem).subject
    # mitmproxy used our files as they are (it only adds its dhparam file)
    after = snapshot(existing_confdir)
    assert set(after) - set(before) == {"mitmproxy-dhparam.pem"}
    assert all(after[name] == before[name] for name in before)


def test_dhparam_is_mitmproxys_own_written_once_so_mitmproxy_writes_nothing(tmp_path):
    """With the CA and ensure_dhparam's file in place, a mitmproxy loading the confdir (each
    of `detour up --workers`'s) only reads: nothing is left for it to write while another
    reads."""
    from mitmproxy.certs import DEFAULT_DHPARAM, CertStore

    ensure_ca(tmp_path)
    path = ensure_dhparam(tmp_path)
    assert path == tmp_path / "mitmproxy-dhparam.pem"
    assert path.read_bytes() == DEFAULT_DHPARAM
    assert mode(path) == 0o644
    before = snapshot(tmp_path)

    assert CertStore.from_store(tmp_path, "mitmproxy", 2048).dhparams
    assert snapshot(tmp_path) == before


def test_an_existing_dhparam_file_is_left_as_it_is(tmp_path):
    path = tmp_path / "mitmproxy-dhparam.pem"
    path.write_bytes(b"the user's own parameters")
    assert ensure_dhparam(tmp_path) == path
    assert path.read_bytes() == b"the user's own parameters"


def test_reuses_a_ca_that_mitmproxy_created_unchanged(tmp_path):
    from mitmproxy.certs import CertStore

    CertStore.create_store(tmp_path, "mitmproxy", 2048)
    store = CertStore.from_store(tmp_path, "mitmproxy", 2048)
    before = snapshot(tmp_path)

    ca = ensure_ca(tmp_path)

    assert not ca.created
    assert ca.fingerprint_sha256 == store.default_ca.fingerprint().hex(":").upper()
    assert snapshot(tmp_path) == before


def test_second_call_reuses_without_touching_anything(existing_confdir):
    before = snapshot(existing_confdir)
    first = ensure_ca(existing_confdir)
    second = ensure_ca(existing_confdir)
    assert not first.created and not second.created
    assert first == second
    assert snapshot(existing_confdir) == before


def test_missing_public_files_are_rewritten_from_the_key_file(existing_confdir):
    files = ca_files(existing_confdir)
    original = ensure_ca(existing_confdir)
    private_before = {r: files[r].read_bytes() for r in ("key", "key_p12")}
    for role in ("cert", "cert_cer", "cert_p12"):
        files[role].unlink()

    ca = ensure_ca(existing_confdir)

    assert not ca.created
    assert ca.fingerprint_sha256 == original.fingerprint_sha256
    assert files["cert"].read_bytes() == original.cert_pem == files["cert_cer"].read_bytes()
    _, _, p12_certs = pkcs12.load_key_and_certificates(files["cert_p12"].read_bytes(), None)
    assert p12_certs == [x509.load_pem_x509_certificate(original.cert_pem)]
    assert {r: files[r].read_bytes() for r in ("key", "key_p12")} == private_before


def test_a_cert_file_that_is_not_the_signing_ca_is_an_error(existing_confdir):
    files = ca_files(existing_confdir)
    _, other = self_signed("someone else")
    files["cert"].write_bytes(pem(other))
    with pytest.raises(CAError, match="mitmproxy-ca-cert.pem does not hold the CA certificate"):
        ensure_ca(existing_confdir)
    assert files["cert"].read_bytes() == pem(other)  # reported, not overwritten


def test_a_key_file_without_a_certificate_is_an_error(tmp_path):
    (tmp_path / "mitmproxy-ca.pem").write_bytes(b"not a pem\n")
    with pytest.raises(CAError, match="holds no PEM certificate"):
        ensure_ca(tmp_path)


def test_a_custom_ca_with_an_encrypted_ec_key_is_used_as_it_is(tmp_path):
    # mitmproxy's documented "custom CA": a PEM with key and cert as mitmproxy-ca.pem; the key may
    # need --set cert_passphrase. We never read the key, so neither matters to us.
    key, cert = self_signed("Corp Proxy CA", days=3650)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "mitmproxy-ca.pem").write_bytes(key_pem + pem(cert))

    ca = ensure_ca(tmp_path)

    assert not ca.created
    assert ca.subject == "CN=Corp Proxy CA"
    assert ca.cert_pem == pem(cert)
    assert not (tmp_path / "mitmproxy-ca.p12").exists()  # private files are never derived
    assert (tmp_path / "mitmproxy-ca.pem").read_bytes() == key_pem + pem(cert)


def test_an_expired_ca_is_reported_not_replaced(tmp_path):
    key, cert = self_signed("old", days=10, start_days_ago=20)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    (tmp_path / "mitmproxy-ca.pem").write_bytes(key_pem + pem(cert))
    ca = ensure_ca(tmp_path)
    assert ca.expired and not ca.created
    assert ca.cert_pem == pem(cert)


def test_an_existing_confdir_keeps_its_mode(tmp_path):
    confdir = tmp_path / "conf"
    confdir.mkdir(mode=0o755)
    confdir.chmod(0o755)
    ensure_ca(confdir)
    assert mode(confdir) == 0o755


def test_losing_a_creation_race_uses_the_winners_ca(tmp_path, monkeypatch):
    """Two commands creating the CA at once must end up with one CA: the second to publish
    adopts the first one's, and its own key never reaches the disk."""
    make = certs.ca._new_ca
    winner = {}

    def racing_new_ca(basename, key_size):
        monkeypatch.setattr(certs.ca, "_new_ca", make)
        winner["ca"] = ensure_ca(tmp_path)  # the other process, finishing first
        return make(basename, key_size)

    monkeypatch.setattr(certs.ca, "_new_ca", racing_new_ca)
    ca = ensure_ca(tmp_path)

    assert winner["ca"].created and not ca.created
    assert ca.fingerprint_sha256 == winner["ca"].fingerprint_sha256
    assert {p.name for p in tmp_path.iterdir()} == MITMPROXY_FILES  # no temp files left
