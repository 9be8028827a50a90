"""Account stores on both engines, for the tests that hold every store to one contract:
detour.db (SQLite) and Postgres (the module's embedded server, `postgres` fixture of
tests/e2e/test_postgres_usage.py: import it beside `account_store`), each test with a database
of its own. `PostgresLink` puts a loopback TCP port in front of that server that a test can
cut and restore, as a network between hosts fails."""

import contextlib
import glob
import itertools
import os
import socket
import threading
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from addons.credentials.store import AccountStore, AccountStoreBase
from addons.credentials.store_postgres import PostgresAccountStore

ENGINES = ["sqlite", "postgres"]
_numbers = itertools.count()


def fresh_database(url: str) -> str:
    """A new, empty database on the server of `url` (the embedded one's URL form)."""
    name = f"detour_test_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.replace("/postgres?", f"/{name}?", 1)


def another(store: AccountStoreBase) -> AccountStoreBase:
    """A second store on the same data, as another process (another host) opens it."""
    if isinstance(store, PostgresAccountStore):
        return PostgresAccountStore(store.url, store.home, store.vault)
    return AccountStore(store.path, store.vault)


@pytest.fixture(params=ENGINES)
def account_store(request, tmp_path, monkeypatch):
    """An empty store of each engine, its key in tmp_path (a file)."""
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    if request.param == "sqlite":
        store = AccountStore(tmp_path / "detour.db")
    else:
        store = PostgresAccountStore(fresh_database(request.getfixturevalue("postgres")),
                                     tmp_path)
    yield store
    store.close()


class PostgresLink:
    """127.0.0.1:port -> the embedded server's Unix socket, one pair of threads per
    connection; `cut()` closes the port and every connection through it, `restore()` opens
    the port again. The server sees local connections (its trust rule)."""

    def __init__(self, url: str):
        folder = parse_qs(urlsplit(url).query)["host"][0]
        self.socket_path = glob.glob(os.path.join(folder, ".s.PGSQL.*"))[0]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    def url(self, database_url: str) -> str:
        """`database_url` (the embedded server's form) through this link."""
        name = urlsplit(database_url).path
        return f"postgresql://postgres@127.0.0.1:{self.port}{name}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            server = socket.socket(socket.AF_UNIX)
            try:
                server.connect(self.socket_path)
            except OSError:
                client.close()
                server.close()
                continue
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):  # closed by `cut`
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def close(self) -> None:
        self.cut()

