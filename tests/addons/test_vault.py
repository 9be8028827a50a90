"""Where the credentials key lives: the OS keyring when a usable backend exists (a test
backend here: this machine has none), else a 0600 file; DETOUR_KEY_BACKEND forces either; a
key file made earlier stays in use when a keyring appears later."""

import os

import keyring
import pytest
from keyring.backend import KeyringBackend

from addons.credentials.store import API_KEY, AccountStore
from addons.credentials.vault import KEYRING_SERVICE, Vault, VaultError


class MemoryKeyring(KeyringBackend):
    priority = 1

    def __init__(self):
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.items.get((service, username))

    def set_password(self, service, username, password):
        self.items[(service, username)] = password

    def delete_password(self, service, username):
        self.items.pop((service, username), None)


@pytest.fixture
def memory_keyring():
    before = keyring.get_keyring()
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    yield ring
    keyring.set_keyring(before)


def test_keyring_when_usable(tmp_path, monkeypatch, memory_keyring):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "auto")
    store = AccountStore(tmp_path / "detour.db")
    store.add("p", "k", API_KEY, {"api_key": "sk-in-keyring-test-0123"})
    assert not (tmp_path / "credentials.key").exists()
    assert (KEYRING_SERVICE, f"credentials-key:{tmp_path}") in memory_keyring.items
    assert AccountStore(tmp_path / "detour.db").accounts(secrets=True)[0].secrets == {
        "api_key": "sk-in-keyring-test-0123"}
    assert store.rotate_key() == 1
    assert len(memory_keyring.items[(KEYRING_SERVICE, f"credentials-key:{tmp_path}")]
               .split()) == 1


def test_file_when_forced_or_made_earlier(tmp_path, monkeypatch, memory_keyring):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    AccountStore(tmp_path / "detour.db").add("p", "k", API_KEY, {"api_key": "x" * 16})
    key = tmp_path / "credentials.key"
    assert oct(os.stat(key).st_mode & 0o777) == "0o600" and not memory_keyring.items
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "auto")  # a keyring now, the file stays in use
    assert AccountStore(tmp_path / "detour.db").accounts(secrets=True)[0].secrets
    assert not memory_keyring.items


def test_keyring_forced_without_one(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "keyring")
    from keyring.backends import fail
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        with pytest.raises(VaultError, match="no usable OS keyring"):
            Vault(tmp_path).check_token()
    finally:
        keyring.set_keyring(before)
