import json

from cryptography import x509

from certs.ca import ensure_ca


def test_path_creates_the_ca_in_the_confdir_and_prints_its_cert(detour, confdir, home):
    result = detour("certs", "path")
    assert result.stdout == f"{confdir / 'mitmproxy-ca-cert.pem'}\n"
    assert f"created a new mitmproxy CA in {confdir}" in result.stderr
    x509.load_pem_x509_certificate((confdir / "mitmproxy-ca-cert.pem").read_bytes())
    assert not home.exists()  # the CA is mitmproxy's, not ours

    again = detour("certs", "path")
    assert again.stdout == result.stdout and again.stderr == ""


def test_show_prints_subject_fingerprint_and_expiry(detour, confdir):
    ca = ensure_ca(confdir)
    out = detour("certs", "show").stdout
    assert "O=mitmproxy,CN=mitmproxy" in out
    assert ca.fingerprint_sha256 in out
    assert ca.not_after.isoformat() in out
    assert "days left" in out

    record = json.loads(detour("certs", "show", "--json").stdout)
    assert record["sha256"] == ca.fingerprint_sha256
    assert record["not_after"] == ca.not_after.isoformat()
    assert record["cert"] == str(ca.cert_path)


def test_bundle_writes_the_bundle_in_home(detour, home, confdir):
    result = detour("certs", "bundle")
    bundle = home / "ca-bundle.pem"
    assert result.stdout == f"{bundle}\n"
    assert bundle.read_bytes().endswith((confdir / "mitmproxy-ca-cert.pem").read_bytes())
    assert (home.stat().st_mode & 0o777) == 0o700


def test_a_broken_ca_is_a_one_line_error(detour, confdir):
    confdir.mkdir()
    (confdir / "mitmproxy-ca.pem").write_text("garbage\n")
    result = detour("certs", "path", expect=2)
    assert "holds no PEM certificate" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
