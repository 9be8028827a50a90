"""The credentials key handed to each host by its operator (DETOUR_CREDENTIALS_KEY, or
DETOUR_CREDENTIALS_KEY_FILE such as a Docker/Compose secret): two hosts given the same key read
the same stored secrets, none of them writes a key file, a host given another key is told so
plainly (the stored check value does not match), and the key shows in no message."""

import logging
import shutil

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from addons.credentials.store import API_KEY, AccountStore
from addons.credentials.vault import KEY_ENV, KEY_FILE, KEY_FILE_ENV, VaultError
from scripts.cli import cli

SECRET = {"api_key": "sk-stored-for-two-hosts-0123"}


@pytest.fixture
def key() -> str:
    return Fernet.generate_key().decode()


def hosts(tmp_path):
    """Host A stores an account; host B has a copy of the database (as a shared store
    would give it) and nothing else."""
    a, b = tmp_path / "host-a", tmp_path / "host-b"
    a.mkdir()
    AccountStore(a / "detour.db").add("p", "shared", API_KEY, SECRET)
    b.mkdir()
    shutil.copy(a / "detour.db", b / "detour.db")
    return a, b


def test_two_hosts_given_the_key_read_the_same_secrets(tmp_path, monkeypatch, key):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    monkeypatch.setenv(KEY_ENV, key)
    a, b = hosts(tmp_path)
    store = AccountStore(b / "detour.db")
    store.check_key()
    assert store.accounts(secrets=True)[0].secrets == SECRET
    assert not (a / KEY_FILE).exists() and not (b / KEY_FILE).exists()

    # the same key in a file (a Compose secret), and an older key after it still decrypts
    secret_file = tmp_path / "run-secrets-detour_credentials_key"
    secret_file.write_text(f"{key}\n{Fernet.generate_key().decode()}\n")
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv(KEY_FILE_ENV, str(secret_file))
    assert AccountStore(b / "detour.db").accounts(secrets=True)[0].secrets == SECRET


def test_a_host_given_another_key_is_told_plainly(tmp_path, monkeypatch, key, caplog):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    monkeypatch.setenv(KEY_ENV, key)
    _, b = hosts(tmp_path)
    other = Fernet.generate_key().decode()
    monkeypatch.setenv(KEY_ENV, other)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(VaultError) as told:
        AccountStore(b / "detour.db").check_key()
    message = str(told.value)
    assert KEY_ENV in message and "check value" in message
    assert other not in message and key not in message and other not in caplog.text

    # the CLI says the same, without the key
    result = CliRunner().invoke(cli, ["--home", str(b), "account", "list", "--json"])
    assert other not in result.output and key not in result.output


def test_detour_never_makes_or_replaces_a_given_key(tmp_path, monkeypatch, key):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    monkeypatch.setenv(KEY_ENV, key)
    a, _ = hosts(tmp_path)
    result = CliRunner().invoke(cli, ["--home", str(a), "account", "rotate-key"])
    assert result.exit_code != 0 and f"given by {KEY_ENV}" in result.output
    assert key not in result.output
    assert AccountStore(a / "detour.db").accounts(secrets=True)[0].secrets == SECRET

    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(VaultError, match=f"{KEY_FILE_ENV}: cannot read .*missing"):
        AccountStore(a / "detour.db").accounts(secrets=True)
    assert not (a / KEY_FILE).exists()


def test_a_value_that_is_no_key_is_named_not_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    monkeypatch.setenv(KEY_ENV, "not-a-fernet-key-but-secret-ish")
    with pytest.raises(VaultError) as told:
        AccountStore(tmp_path / "detour.db").add("p", "k", API_KEY, SECRET)
    assert KEY_ENV in str(told.value) and "not a Fernet key" in str(told.value)
    assert "secret-ish" not in str(told.value) and not (tmp_path / KEY_FILE).exists()
