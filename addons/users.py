"""The gateway's users: `DETOUR_HOME/users.htpasswd`, one line per user, that both detour and
mitmproxy's own `proxyauth` option (`@path`: an Apache htpasswd file) read.

    alice:$2b$05$...:rpm=60,tokens_per_day=2000000,usd_per_month=50

A line is the user's name, the bcrypt hash of its secret (never the secret: `detour user add`
prints it once) and, after a second colon, its limits. mitmproxy's htpasswd reader keeps only
what precedes that colon as the hash, so the limits ride in the same file and one edit (an
atomic rename) changes both. The secrets are 192 random bits, so bcrypt's cost adds nothing
against guessing them: the lowest cost keeps a client connection's check near a millisecond.

Pure file code, shared by the `detour user` commands and the gateway addon: no mitmproxy.
"""

import fcntl
import os
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import bcrypt

USERS_NAME = "users.htpasswd"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BCRYPT_ROUNDS = 5
LIMIT_NAMES = ("rpm", "tokens_per_day", "usd_per_month")


class UsersError(ValueError):
    """A users file or a request about it that cannot be used; the message says which."""


@dataclass(frozen=True, slots=True)
class UserLimits:
    """What one user may spend; None: no limit. Windows are fixed and in UTC: the current
    minute, day and calendar month."""

    rpm: int | None = None  # model calls per minute
    tokens_per_day: int | None = None  # input + output + cache tokens of the day's calls
    usd_per_month: float | None = None  # cost_usd of the month's calls

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in LIMIT_NAMES)

    def text(self) -> str:
        return ",".join(f"{name}={_number(getattr(self, name))}" for name in LIMIT_NAMES
                        if getattr(self, name) is not None)

    @classmethod
    def parse(cls, text: str, where: str) -> "UserLimits":
        values: dict = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep or name not in LIMIT_NAMES:
                raise UsersError(f"{where}: unknown limit {item!r} (known: "
                                 f"{', '.join(LIMIT_NAMES)})")
            try:
                number = float(value) if name == "usd_per_month" else int(value)
            except ValueError:
                raise UsersError(f"{where}: {name}={value!r} is not a number") from None
            if number < 0:
                raise UsersError(f"{where}: {name} must not be negative")
            values[name] = number
        return cls(**values)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    secret_hash: str  # bcrypt
    limits: UserLimits = UserLimits()

    def __repr__(self) -> str:
        return f"User({self.name!r}, {self.limits})"

    def check(self, secret: str) -> bool:
        try:
            return bcrypt.checkpw(secret.encode(), self.secret_hash.encode())
        except ValueError:
            return False


def users_path(home: Path) -> Path:
    return home / USERS_NAME


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UsersError(f"user name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit")
    return name


def new_secret() -> str:
    """A user's secret: URL-safe, so it goes into a proxy URL as it is."""
    return secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()


def parse_users(text: str, where: str) -> dict[str, User]:
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        secret_hash, _, limits = rest.partition(":")
        at = f"{where}, line {number}"
        if not NAME_PATTERN.fullmatch(name) or not secret_hash.startswith(("$2b$", "$2y$",
                                                                            "$2a$")):
            raise UsersError(f"{at}: not NAME:BCRYPT_HASH[:LIMITS]")
        users[name] = User(name, secret_hash, UserLimits.parse(limits, at))
    return users


def read_users(path: Path) -> dict[str, User] | None:
    """The users in `path`; None when there is no such file (no gateway: no authentication)."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsersError(f"{path}: cannot read: {e.strerror}") from None
    return parse_users(text, str(path))


def render_users(users: dict[str, User]) -> str:
    lines = ["# detour's users (detour user add|remove|limits). name:bcrypt-hash[:limits]"]
    for user in users.values():
        limits = user.limits.text()
        lines.append(f"{user.name}:{user.secret_hash}" + (f":{limits}" if limits else ""))
    return "\n".join(lines) + "\n"


def write_users(path: Path, users: dict[str, User]) -> None:
    """Replace the file at once (a running proxy never reads half of it), private (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_users(users))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def editing(home: Path):
    """The users, for one change: yields the dict (empty when there is no file yet) and
    writes it back; two `detour user` commands at once take turns (a lock file)."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = users_path(home)
    lock_fd = os.open(home / f".{USERS_NAME}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        users = read_users(path) or {}
        yield users
        write_users(path, users)
    finally:
        os.close(lock_fd)


NO_LIMIT = "none"


def with_limits(user: User, **changes) -> User:
    """The user with these limits changed: a number sets one (0 refuses every call: a
    suspended user), NO_LIMIT removes it, None leaves it as it is."""
    values = {name: getattr(user.limits, name) for name in LIMIT_NAMES}
    for name, value in changes.items():
        if value == NO_LIMIT:
            values[name] = None
        elif value is not None:
            values[name] = value
    return replace(user, limits=UserLimits(**values))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
