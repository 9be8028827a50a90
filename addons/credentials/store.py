"""The `accounts` table: accounts detour holds itself, their secrets encrypted. In
DETOUR_HOME/detour.db (`AccountStore`, SQLite), or in the Postgres database every process
shares when config.yaml says `database: postgresql://...` (`PostgresAccountStore`,
store_postgres.py); `open_account_store` picks the one configured. What an account store does
is written once here (`AccountStoreBase`), over the SQL both engines speak; each engine says
how it connects, and how a write transaction excludes every other writer.

One row per account: provider (the config.yaml provider it joins), name (unique within the
provider), kind (`api_key` or `oauth`), vendor (the login it came from: claude, codex, ...),
priority, enabled, state (`ready`, `needs_login`, `disabled`), metadata (email, plan, project
id, account id), the access token's expiry, the last error, and `secret`: one Fernet token
holding every secret field (the API key, or the access, refresh and id tokens). Nothing secret
is ever in another column.

Every write is one transaction that also bumps `accounts_revision` in `detour_meta`: a running
proxy polls that number and re-reads the accounts when it moves. A token refresh commits the
new tokens with a compare-and-swap on `generation` (the tokens' version), and a refresh is
done only under the account's lease (`lease_owner`, `lease_until`), so two processes holding
the same database never spend the same refresh token.

Migrations: `detour_meta.accounts_schema` is the schema version; `SCHEMA[i]` holds the columns
that version i + 1 adds (both engines build their tables from it), `MIGRATIONS[i]` takes a
SQLite database from version i to i + 1.
"""

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from addons.credentials.vault import Vault, VaultError

API_KEY = "api_key"
OAUTH = "oauth"
READY = "ready"
NEEDS_LOGIN = "needs_login"
DISABLED = "disabled"
META = "detour_meta"
TABLE = "accounts"
BUSY_TIMEOUT = 5.0
REVISION = "accounts_revision"

log = logging.getLogger(__name__)

# (columns, defaults) each schema version adds; `id` is the key, (provider, name) unique
SCHEMA = (
    ({"id": int, "provider": str, "name": str, "kind": str, "vendor": str,
      "priority": int, "enabled": int, "state": str, "email": str, "plan": str,
      "project_id": str, "account_id": str, "expires_at": float, "last_error": str,
      "secret": str, "generation": int, "lease_owner": str, "lease_until": float,
      "created": str, "updated": str},
     {"vendor": "", "priority": 1, "enabled": 1, "state": READY, "generation": 0,
      "lease_until": 0.0}),
    # fingerprints (SHA-256) of every refresh token an account has held: a CLI still holding
    # an earlier one of the chain is recognised when it asks to refresh (owner.py)
    ({"refresh_hashes": str}, {}),
)
NOT_NULL = {"provider", "name", "kind", "secret"}


def _v1(db: sqlite_utils.Database) -> None:
    columns, defaults = SCHEMA[0]
    db[TABLE].create(columns, pk="id", not_null=NOT_NULL, defaults=defaults)
    db[TABLE].create_index(["provider", "name"], unique=True)


def _v2(db: sqlite_utils.Database) -> None:
    for name, typ in SCHEMA[1][0].items():
        db[TABLE].add_column(name, typ)


MIGRATIONS = (_v1, _v2)
KEPT_HASHES = 20


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _with_hash(current: str | None, secrets: dict) -> str | None:
    hashes = json.loads(current) if current else []
    token = secrets.get("refresh_token")
    if token and token_hash(token) not in hashes:
        hashes.append(token_hash(token))
    return json.dumps(hashes[-KEPT_HASHES:]) if hashes else current


@dataclass
class StoredAccount:
    """An account's row without its secret (`secrets` is filled only when asked for)."""

    id: int
    provider: str
    name: str
    kind: str
    vendor: str = ""
    priority: int = 1
    enabled: bool = True
    state: str = READY
    email: str | None = None
    plan: str | None = None
    project_id: str | None = None
    account_id: str | None = None
    expires_at: float | None = None  # Unix seconds, the access token's
    last_error: str | None = None
    generation: int = 0
    secrets: dict | None = field(default=None, repr=False)
    current_secret: str = field(default="", repr=False)  # the API key or access token

    @property
    def label(self) -> str:
        """How logs, flows and usage rows name it (never the secret)."""
        return f"db:{self.name}"

    @property
    def usable(self) -> bool:
        return self.enabled and self.state == READY

    @staticmethod
    def of(row: dict) -> "StoredAccount":
        return StoredAccount(row["id"], row["provider"], row["name"], row["kind"],
                             row["vendor"] or "", row["priority"], bool(row["enabled"]),
                             row["state"] or READY, row["email"], row["plan"],
                             row["project_id"], row["account_id"], row["expires_at"],
                             row["last_error"], row["generation"] or 0)


class AccountError(Exception):
    """A user's mistake with an account (unknown name, a name taken): said plainly."""


class StoreUnavailable(Exception):
    """The shared account database cannot be reached now (Postgres away): a proxy serves on
    with the accounts it last read, a command says so in one line."""


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def lease_owner() -> str:
    """Who holds a refresh lease: this process, on this host."""
    return f"{os.getpid()}@{os.uname().nodename}"


class AccountStoreBase:
    """The accounts, whatever the engine. A subclass sets `vault`, `owner` (who holds a
    lease) and `where` (for messages), and gives `_read` (a connection to read with) and
    `_transaction` (one write transaction, no other writer meanwhile); SQL is written with
    `?` placeholders."""

    vault: Vault
    owner: str
    where: str

    @contextmanager
    def _read(self):
        raise NotImplementedError

    @contextmanager
    def _transaction(self):
        raise NotImplementedError

    def _now(self, db) -> float:
        """The clock leases are measured by."""
        return time.time()

    def close(self) -> None:
        """Let go of kept connections (a later call opens them again)."""

    @staticmethod
    def _meta(db, key: str) -> str | None:
        row = db.execute(f"SELECT value FROM {META} WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    @staticmethod
    def _set_meta(db, key: str, value: str) -> None:
        db.execute(f"INSERT INTO {META} (key, value) VALUES (?, ?) ON CONFLICT(key) DO "
                   "UPDATE SET value = excluded.value", [key, value])

    @staticmethod
    def _rows(db, where: str | None = None, args=(), order: str = "provider, priority, id"
              ) -> list[dict]:
        cursor = db.execute(f"SELECT * FROM {TABLE}" + (f" WHERE {where}" if where else "")
                            + f" ORDER BY {order}", list(args))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    @staticmethod
    def _insert(db, record: dict) -> None:
        db.execute(f"INSERT INTO {TABLE} ({', '.join(record)}) VALUES "
                   f"({', '.join('?' * len(record))})", list(record.values()))

    def _write(self, fn):
        """Run fn(db) in one transaction that bumps the revision; returns fn's answer."""
        with self._transaction() as db:
            out = fn(db)
            # one statement: the new revision is computed under the row's lock
            db.execute(f"INSERT INTO {META} (key, value) VALUES (?, '1') ON CONFLICT(key) DO "
                       f"UPDATE SET value = CAST(CAST({META}.value AS BIGINT) + 1 AS TEXT)",
                       [REVISION])
            return out

    def revision(self) -> int:
        """A number that moves with every write (a running proxy re-reads the accounts when
        it does)."""
        with self._read() as db:
            return int(self._meta(db, REVISION) or 0)

    # ------------------------------------------------------------ the key

    def check_key(self) -> None:
        """VaultError (saying what to do) unless the key decrypts what is stored; a first use
        creates the key and keeps its check value."""
        with self._read() as db:
            check = self._meta(db, "key_check")
            has_rows = db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        if check is None:
            if has_rows:
                raise VaultError(self.vault.wrong_message())
            self._write(lambda db: self._meta(db, "key_check") is None and self._set_meta(
                db, "key_check", self.vault.check_token()))
            check = self._key_check()  # another process may have kept its own first
        if self.vault.keys(create=False) is None:
            raise VaultError(self.vault.lost_message())
        self.vault.verify(check)

    def _key_check(self) -> str:
        with self._read() as db:
            return self._meta(db, "key_check")

    def rotate_key(self) -> int:
        """A new key; every secret re-encrypted with it in one transaction; then the old key is
        dropped. Returns the accounts re-encrypted."""
        self.check_key()
        _, fernet = self.vault.rotate_key()

        def rewrite(db):
            rows = db.execute(f"SELECT id, secret FROM {TABLE}").fetchall()
            for id_, token in rows:
                db.execute(f"UPDATE {TABLE} SET secret = ? WHERE id = ?",
                           [fernet.rotate(token.encode()).decode(), id_])
            self._set_meta(db, "key_check", fernet.rotate(
                self._meta(db, "key_check").encode()).decode())
            return len(rows)
        count = self._write(rewrite)
        self.vault.drop_old()
        return count

    # ------------------------------------------------------------ reading

    def accounts(self, provider: str | None = None, secrets: bool = False
                 ) -> list[StoredAccount]:
        """Every account (of one provider), by provider, priority, id; with `secrets`, each
        one's secrets decrypted (VaultError if the key is wrong)."""
        with self._read() as db:
            rows = self._rows(db, *(("provider = ?", [provider]) if provider else ()))
        out = [StoredAccount.of(r) for r in rows]
        if secrets:
            if rows:
                self.check_key()
            for acct, row in zip(out, rows):
                acct.secrets = self.vault.decrypt(row["secret"])
        return out

    def get(self, provider: str, name: str, secrets: bool = False) -> StoredAccount:
        for acct in self.accounts(provider, secrets=False):
            if acct.name == name:
                if secrets:
                    acct.secrets = self.secrets_of(acct.id)[0]
                return acct
        names = ", ".join(a.name for a in self.accounts(provider)) or "none"
        raise AccountError(f"no account {name!r} of provider {provider!r} (stored: {names})")

    def by_id(self, account_id: int) -> StoredAccount | None:
        with self._read() as db:
            rows = self._rows(db, "id = ?", [account_id])
        return StoredAccount.of(rows[0]) if rows else None

    def holding(self, vendor: str, refresh_token: str) -> StoredAccount | None:
        """The account of this vendor whose chain of refresh tokens includes this one (the
        one a CLI kept when detour adopted its login), if any."""
        h = token_hash(refresh_token)
        for acct, hashes in self._hashes(vendor):
            if h in hashes:
                return acct
        return None

    def vendors_held(self) -> set[str]:
        with self._read() as db:
            return {r[0] for r in db.execute(
                f"SELECT DISTINCT vendor FROM {TABLE} WHERE kind = ?", [OAUTH]).fetchall()}

    def _hashes(self, vendor: str):
        with self._read() as db:
            rows = self._rows(db, "vendor = ? AND kind = ?", [vendor, OAUTH])
        return [(StoredAccount.of(r), json.loads(r["refresh_hashes"] or "[]")) for r in rows]

    def secrets_of(self, account_id: int) -> tuple[dict, int]:
        """An account's secrets, decrypted, and their generation."""
        with self._read() as db:
            row = db.execute(f"SELECT secret, generation FROM {TABLE} WHERE id = ?",
                             [account_id]).fetchone()
        if row is None:
            raise AccountError(f"account {account_id} is gone")
        return self.vault.decrypt(row[0]), row[1] or 0

    # ------------------------------------------------------------ writing

    def add(self, provider: str, name: str | None, kind: str, secrets: dict, *,
            vendor: str = "", priority: int = 1, expires_at: float | None = None,
            replace: bool = False, **meta) -> StoredAccount:
        """A new account (a free name `key-N` / `login-N` when none is given); `replace`
        overwrites the secrets of an account of that name (a login done again)."""
        self.check_key()
        token = self.vault.encrypt(secrets)

        def insert(db):
            taken = {r[0] for r in db.execute(
                f"SELECT name FROM {TABLE} WHERE provider = ?", [provider]).fetchall()}
            chosen = name
            if not chosen:
                stem = "key" if kind == API_KEY else "login"
                chosen = next(f"{stem}-{i}" for i in range(1, len(taken) + 2)
                              if f"{stem}-{i}" not in taken)
            now = now_iso()
            fields = {"kind": kind, "vendor": vendor, "secret": token, "expires_at": expires_at,
                      "state": READY, "last_error": None, "updated": now,
                      **{k: v for k, v in meta.items() if v is not None}}
            old = db.execute(f"SELECT refresh_hashes FROM {TABLE} WHERE provider = ? AND "
                             "name = ?", [provider, chosen]).fetchone()
            fields["refresh_hashes"] = _with_hash(old[0] if old else None, secrets)
            if chosen in taken:
                if not replace:
                    raise AccountError(f"provider {provider!r} already has an account named "
                                       f"{chosen!r} (pick another --name, or remove it first)")
                db.execute(
                    f"UPDATE {TABLE} SET {', '.join(f'{k} = ?' for k in fields)}, "
                    "generation = generation + 1 WHERE provider = ? AND name = ?",
                    [*fields.values(), provider, chosen])
            else:
                self._insert(db, {"provider": provider, "name": chosen, "priority": priority,
                                  "enabled": 1, "generation": 0, "created": now, **fields})
            row = self._rows(db, "provider = ? AND name = ?", [provider, chosen])[0]
            return StoredAccount.of(row)
        return self._write(insert)

    def _update(self, provider: str, current: str, **fields) -> StoredAccount:
        acct = self.get(provider, current)
        fields["updated"] = now_iso()
        self._write(lambda db: db.execute(
            f"UPDATE {TABLE} SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
            [*fields.values(), acct.id]))
        return self.by_id(acct.id)

    def remove(self, provider: str, name: str) -> None:
        acct = self.get(provider, name)
        self._write(lambda db: db.execute(f"DELETE FROM {TABLE} WHERE id = ?", [acct.id]))

    def remove_all(self) -> int:
        """Every stored account and the key check (the start over after a lost key)."""
        def wipe(db):
            n = db.execute(f"DELETE FROM {TABLE}").rowcount
            db.execute(f"DELETE FROM {META} WHERE key = 'key_check'")
            return n
        return self._write(wipe)

    def set_enabled(self, provider: str, name: str, enabled: bool) -> StoredAccount:
        acct = self.get(provider, name)
        state = acct.state
        if not enabled:
            state = DISABLED
        elif state == DISABLED:
            state = READY
        return self._update(provider, name, enabled=int(enabled), state=state)

    def rename(self, provider: str, name: str, new: str) -> StoredAccount:
        if any(a.name == new for a in self.accounts(provider)):
            raise AccountError(f"provider {provider!r} already has an account named {new!r}")
        return self._update(provider, name, name=new)

    def set_priority(self, provider: str, name: str, priority: int) -> StoredAccount:
        return self._update(provider, name, priority=priority)

    def mark(self, account_id: int, state: str | None = None, last_error: str | None = None
             ) -> None:
        """A state (needs_login after invalid_grant) and/or the last error, by id."""
        fields: dict = {"updated": now_iso(), "last_error": last_error}
        if state is not None:
            fields["state"] = state
        self._write(lambda db: db.execute(
            f"UPDATE {TABLE} SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
            [*fields.values(), account_id]))

    def set_project(self, account_id: int, project_id: str, plan: str | None = None) -> None:
        """A Google login's Code Assist project (and tier, as its plan), found on the request
        path: kept so that a restart does not ask again."""
        fields: dict = {"project_id": project_id, "updated": now_iso()}
        if plan:
            fields["plan"] = plan
        self._write(lambda db: db.execute(
            f"UPDATE {TABLE} SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
            [*fields.values(), account_id]))

    # ------------------------------------------------------------ refresh: lease and commit

    def take_lease(self, account_id: int, seconds: float) -> bool:
        """The right to refresh this account for `seconds` (no other process may meanwhile);
        False while another holds it."""
        def take(db):
            now = self._now(db)
            return db.execute(
                f"UPDATE {TABLE} SET lease_owner = ?, lease_until = ? WHERE id = ? AND "
                "(lease_until IS NULL OR lease_until < ? OR lease_owner = ?)",
                [self.owner, now + seconds, account_id, now, self.owner]).rowcount == 1
        return self._write(take)

    def drop_lease(self, account_id: int) -> None:
        self._write(lambda db: db.execute(
            f"UPDATE {TABLE} SET lease_owner = NULL, lease_until = 0 WHERE id = ? AND "
            "lease_owner = ?", [account_id, self.owner]))

    def commit_tokens(self, account_id: int, generation: int, secrets: dict,
                      expires_at: float | None, **meta) -> int:
        """The refreshed tokens, stored (durably: the transaction is committed when this
        returns) if the stored ones are still those of `generation`; returns the new
        generation. AccountError if another writer changed them meanwhile."""
        token = self.vault.encrypt(secrets)
        fields = {"secret": token, "expires_at": expires_at, "state": READY,
                  "last_error": None, "updated": now_iso(),
                  **{k: v for k, v in meta.items() if v is not None}}

        def swap(db):
            old = db.execute(f"SELECT refresh_hashes FROM {TABLE} WHERE id = ?",
                             [account_id]).fetchone()
            fields["refresh_hashes"] = _with_hash(old[0] if old else None, secrets)
            done = db.execute(
                f"UPDATE {TABLE} SET {', '.join(f'{k} = ?' for k in fields)}, "
                "generation = generation + 1 WHERE id = ? AND generation = ?",
                [*fields.values(), account_id, generation]).rowcount
            if done != 1:
                raise AccountError(f"account {account_id}: its tokens changed meanwhile")
            return generation + 1
        return self._write(swap)


class AccountStore(AccountStoreBase):
    """The accounts in a SQLite file (DETOUR_HOME/detour.db), WAL; a write transaction is
    BEGIN IMMEDIATE."""

    def __init__(self, path: Path, vault: Vault | None = None):
        self.path = path
        self.where = str(path)
        self.vault = vault or Vault(path.parent)
        self.owner = lease_owner()
        # the revision is watched through one kept connection: `PRAGMA data_version` tells
        # whether anyone wrote since the last look, without opening the file each time
        self._watch: sqlite3.Connection | None = None
        self._watch_lock = threading.Lock()
        self._seen: tuple[int, int] | None = None  # (data_version, revision)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._migrate()

    def _db(self) -> sqlite_utils.Database:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return sqlite_utils.Database(conn)

    @contextmanager
    def _read(self):
        db = self._db()
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self):
        with self._read() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._transaction() as db:
            if not db[META].exists():
                db[META].create({"key": str, "value": str}, pk="key")
            version = int(self._meta(db, "accounts_schema") or 0)
            for step in MIGRATIONS[version:]:
                step(db)
            if version < len(MIGRATIONS):
                self._set_meta(db, "accounts_schema", str(len(MIGRATIONS)))
        # the database holds no plain secret, but rests and usage are the user's business
        for path in (self.path, self.path.with_name(self.path.name + "-wal"),
                     self.path.with_name(self.path.name + "-shm")):
            try:
                if os.stat(path).st_mode & 0o077:
                    os.chmod(path, 0o600)
            except FileNotFoundError:
                pass

    def revision(self) -> int:
        with self._watch_lock:
            if self._watch is None:
                self._watch = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT,
                                              isolation_level=None, check_same_thread=False)
            version = self._watch.execute("PRAGMA data_version").fetchone()[0]
            if self._seen is None or self._seen[0] != version:
                # something was written (usage rows too: the revision says if accounts were)
                self._seen = (version, int(self._meta(self._watch, REVISION) or 0))
            return self._seen[1]

    def close(self) -> None:
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
                self._watch, self._seen = None, None

    def store_id(self) -> str:
        """This database's own name (made once): what an import into a shared store
        remembers it by."""
        with self._read() as db:
            known = self._meta(db, "store_id")
        if known:
            return known
        made = os.urandom(12).hex()
        self._write(lambda db: db.execute(
            f"INSERT INTO {META} (key, value) VALUES ('store_id', ?) ON CONFLICT(key) DO "
            "NOTHING", [made]))
        with self._read() as db:
            return self._meta(db, "store_id")


def open_account_store(home: Path, database: str | None,
                       say: Callable[[str], None] = log.info) -> AccountStoreBase:
    """The account store config.yaml names: Postgres with `database:` (the accounts of this
    home's detour.db imported into it once, `say` telling what was), else detour.db."""
    if not database:
        return AccountStore(home / "detour.db")
    from addons.credentials.store_postgres import PostgresAccountStore  # psycopg: only then
    store = PostgresAccountStore(database, home)
    store.import_home(home, say)
    return store
