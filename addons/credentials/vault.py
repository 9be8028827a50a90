"""The key that encrypts stored credentials, and the encryption itself.

The key lives in the OS keyring when a usable backend exists (service `detour`, one entry per
DETOUR_HOME), else in `DETOUR_HOME/credentials.key` (0600). `DETOUR_KEY_BACKEND=file|keyring`
forces one. The file (or entry) holds one Fernet key per line, newest first: MultiFernet
decrypts with any of them and encrypts with the first, so `rotate` adds a key, re-encrypts
every secret and then drops the old ones.

A known value encrypted with the key (`check`) is kept in the database beside the secrets, so
a wrong or lost key is told at once, with what to do, instead of failing one secret at a time.

Several hosts reading the same stored secrets (a team gateway) need the same key: the operator
hands it to each in `DETOUR_CREDENTIALS_KEY` (the key itself, several comma- or
newline-separated, newest first) or `DETOUR_CREDENTIALS_KEY_FILE` (a file holding it, e.g. a
Docker/Compose secret under /run/secrets). Either takes precedence over the keyring and the
file; detour never writes it (no key is made up, no rotation: the operator owns it) and never
shows it. `detour account rotate-key` is refused then, saying how.
"""

import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE = "credentials.key"
KEY_ENV = "DETOUR_CREDENTIALS_KEY"
KEY_FILE_ENV = "DETOUR_CREDENTIALS_KEY_FILE"
KEYRING_SERVICE = "detour"
CHECK_PLAINTEXT = b"detour credentials key"


class VaultError(Exception):
    """The key is missing or wrong: the message says what to do."""


def _keyring():
    """The OS keyring module when a backend that can store secrets works here, else None."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 0) <= 0:
        return None
    try:
        keyring.get_password(KEYRING_SERVICE, "probe")
    except Exception:  # a backend that exists but cannot be reached (no D-Bus session, locked)
        return None
    return keyring


class Vault:
    def __init__(self, home: Path, backend: str | None = None):
        self.home = home
        self.backend = backend or os.environ.get("DETOUR_KEY_BACKEND", "auto")
        if self.backend not in ("auto", "file", "keyring"):
            raise VaultError(f"DETOUR_KEY_BACKEND={self.backend!r}: use file, keyring or auto")
        self._keys: list[bytes] | None = None
        self._fernet: MultiFernet | None = None

    @property
    def key_path(self) -> Path:
        return self.home / KEY_FILE

    @property
    def keyring_user(self) -> str:
        return f"credentials-key:{self.home}"

    @staticmethod
    def given() -> str | None:
        """The environment variable the operator hands the key in, if any."""
        for name in (KEY_ENV, KEY_FILE_ENV):
            if os.environ.get(name, "").strip():
                return name
        return None

    def where(self) -> str:
        """Where the key is (or would be) kept, for messages (never the key)."""
        given = self.given()
        if given == KEY_FILE_ENV:
            return f"{KEY_FILE_ENV} ({os.environ[KEY_FILE_ENV].strip()})"
        if given:
            return given
        if self._use_keyring():
            return f"the OS keyring (service {KEYRING_SERVICE!r}, entry {self.keyring_user!r})"
        return str(self.key_path)

    def _use_keyring(self):
        if self.backend == "file":
            return None
        kr = _keyring()
        if kr is None and self.backend == "keyring":
            raise VaultError("DETOUR_KEY_BACKEND=keyring, but no usable OS keyring backend "
                             "was found here; use DETOUR_KEY_BACKEND=file")
        if kr is not None and self.backend == "auto" and self.key_path.exists():
            return None  # a key file made earlier stays in use
        return kr

    # ------------------------------------------------------------ the key

    def _read(self) -> list[bytes] | None:
        given = self.given()
        kr = None if given else self._use_keyring()
        if given == KEY_ENV:
            text = os.environ[KEY_ENV].replace(",", "\n")
        elif given == KEY_FILE_ENV:
            path = Path(os.environ[KEY_FILE_ENV].strip()).expanduser()
            try:
                text = path.read_text().replace(",", "\n")
            except OSError as e:
                raise VaultError(f"{KEY_FILE_ENV}: cannot read {path} "
                                 f"({e.strerror or type(e).__name__})") from None
            if not text.strip():
                raise VaultError(f"{KEY_FILE_ENV}: {path} is empty; put the credentials key "
                                 "every host shares in it")
        elif kr is not None:
            text = kr.get_password(KEYRING_SERVICE, self.keyring_user)
        else:
            try:
                text = self.key_path.read_text()
            except FileNotFoundError:
                return None
        if not text:
            return None
        keys = [line.strip().encode() for line in text.splitlines() if line.strip()]
        for k in keys:
            try:
                Fernet(k)
            except ValueError:
                raise VaultError(f"the credentials key in {self.where()} is damaged (not a "
                                 "Fernet key); restore it from a backup") from None
        return keys

    def _write(self, keys: list[bytes]) -> None:
        given = self.given()
        if given:  # the operator's, in every host's environment: never replaced from here
            raise VaultError(
                f"the credentials key is given by {given}, so detour does not make or "
                "replace it. Give it a key (`python -c 'from cryptography.fernet import "
                f"Fernet; print(Fernet.generate_key().decode())'`); to rotate, unset {given} "
                f"with the key in {KEY_FILE} (DETOUR_KEY_BACKEND=file), run `detour account "
                f"rotate-key`, then hand every host the new key")
        text = "\n".join(k.decode() for k in keys) + "\n"
        kr = self._use_keyring()
        if kr is not None:
            kr.set_password(KEYRING_SERVICE, self.keyring_user, text)
            return
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.key_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.key_path)

    def keys(self, create: bool) -> list[bytes] | None:
        if self._keys is None:
            keys = self._read()
            if keys is None and create:
                keys = [Fernet.generate_key()]
                self._write(keys)
            self._keys = keys
        return self._keys

    def fernet(self, create: bool = False) -> MultiFernet:
        if self._fernet is None:
            keys = self.keys(create)
            if keys is None:
                raise VaultError(self.lost_message())
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        return self._fernet

    def lost_message(self) -> str:
        return (f"the key that encrypts detour's stored credentials is missing from "
                f"{self.where()}. Restore it from a backup (DETOUR_KEY_BACKEND=file|keyring "
                "says where to look), or start over: `detour account remove --all` forgets "
                "the stored accounts, then add or log in again")

    def wrong_message(self) -> str:
        if self.given():
            return (f"the key given by {self.where()} does not decrypt detour's stored "
                    "credentials (it does not match the check value stored with them: another "
                    "host's or an old key). Every host must be given the key the credentials "
                    "were stored with; or start over: `detour account remove --all` forgets "
                    "the stored accounts, then add or log in again")
        return (f"the key in {self.where()} does not decrypt detour's stored credentials (it "
                "was replaced, or belongs to another DETOUR_HOME). Put the right key back, "
                "or start over: `detour account remove --all` forgets the stored accounts, "
                "then add or log in again")

    # ------------------------------------------------------------ encryption

    def check_token(self) -> str:
        return self.fernet(create=True).encrypt(CHECK_PLAINTEXT).decode()

    def verify(self, check: str) -> None:
        try:
            ok = self.fernet().decrypt(check.encode()) == CHECK_PLAINTEXT
        except InvalidToken:
            ok = False
        if not ok:
            raise VaultError(self.wrong_message())

    def encrypt(self, secret: dict) -> str:
        return self.fernet(create=True).encrypt(json.dumps(secret).encode()).decode()

    def decrypt(self, token: str) -> dict:
        try:
            return json.loads(self.fernet().decrypt(token.encode()))
        except InvalidToken:
            raise VaultError(self.wrong_message()) from None

    def rotate_key(self) -> tuple[list[bytes], MultiFernet]:
        """A new key in front (the old ones still decrypt): returns the old keys and the
        MultiFernet to re-encrypt with; `drop_old` ends the rotation."""
        old = list(self.keys(create=True))
        new = [Fernet.generate_key()] + old
        self._write(new)
        self._keys, self._fernet = new, MultiFernet([Fernet(k) for k in new])
        return old, self._fernet

    def drop_old(self) -> None:
        keys = self.keys(create=False)
        self._write(keys[:1])
        self._keys = keys[:1]
        self._fernet = MultiFernet([Fernet(keys[0])])
