"""The commands that trust the CA system-wide, for each system (run nowhere here)."""

from pathlib import Path

import pytest

from certs.trust_store import INSTALLED_NAME, install_plan, with_privileges

CA = Path("/home/u/.mitmproxy/mitmproxy-ca-cert.pem")


def test_debian_and_ubuntu(tmp_path):
    (tmp_path / "usr/local/share/ca-certificates").mkdir(parents=True)
    plan = install_plan(CA, "linux", root=tmp_path)
    assert plan.steps == [
        ["cp", str(CA), str(tmp_path / "usr/local/share/ca-certificates" / INSTALLED_NAME)],
        ["update-ca-certificates"]]
    assert plan.admin and "NODE_EXTRA_CA_CERTS" in plan.note


@pytest.mark.parametrize("anchors", ["etc/pki/ca-trust/source/anchors",
                                     "etc/ca-certificates/trust-source/anchors"])
def test_fedora_rhel_and_arch(tmp_path, anchors):
    (tmp_path / anchors).mkdir(parents=True)
    plan = install_plan(CA, "linux", root=tmp_path)
    assert plan.steps == [["cp", str(CA), str(tmp_path / anchors / INSTALLED_NAME)],
                          ["update-ca-trust", "extract"]]


def test_an_unknown_linux_says_what_to_do(tmp_path):
    plan = install_plan(CA, "linux", root=tmp_path)
    assert not plan.supported
    assert "add the CA with your distribution's tool" in plan.note


def test_macos_system_and_login_keychains():
    system = install_plan(CA, "darwin")
    assert system.steps == [["security", "add-trusted-cert", "-d", "-r", "trustRoot", "-k",
                             "/Library/Keychains/System.keychain", str(CA)]]
    assert system.admin
    user = install_plan(CA, "darwin", system_wide=False)
    assert user.steps[0][:5] == ["security", "add-trusted-cert", "-r", "trustRoot", "-k"]
    assert user.steps[0][5].endswith("Library/Keychains/login.keychain-db")
    assert not user.admin


def test_windows_machine_and_user_root_stores():
    assert install_plan(CA, "win32").steps == [
        ["certutil", "-addstore", "-f", "Root", str(CA)]]
    user = install_plan(CA, "win32", system_wide=False)
    assert user.steps == [["certutil", "-addstore", "-user", "-f", "Root", str(CA)]]
    assert not user.admin and "dialog" in user.note


def test_another_system():
    assert not install_plan(CA, "freebsd14").supported


def test_sudo_only_for_shared_stores_and_not_as_root():
    step = ["update-ca-certificates"]
    assert with_privileges(step, admin=True, is_root=False, has_sudo=True) == ["sudo", *step]
    assert with_privileges(step, admin=True, is_root=True, has_sudo=True) == step
    assert with_privileges(step, admin=False, is_root=False, has_sudo=True) == step
    assert with_privileges(step, admin=True, is_root=False, has_sudo=False) == step
