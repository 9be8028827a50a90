"""Writing files so that a reader never sees half of one, and a key is never readable by others."""

import os
import secrets
from pathlib import Path


def _temp_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL + mode at creation: a private key is never readable by others, not even briefly
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    os.chmod(path, mode)  # the umask may have removed bits we want (0644 for public files)


def write_atomic(dest: Path, data: bytes, mode: int) -> None:
    """Write through a temp file and rename: a reader sees the old file or the new, never half."""
    tmp = _temp_path(dest)
    write_new(tmp, data, mode)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def publish_exclusive(dest: Path, data: bytes) -> bool:
    """Create `dest` (0600) with `data` unless it exists; False if it already did.
    A hard link is atomic and exclusive, so a concurrent reader never sees a half-written key."""
    tmp = _temp_path(dest)
    write_new(tmp, data, 0o600)
    try:
        os.link(tmp, dest)
        return True
    except FileExistsError:
        return False
    except OSError:
        # filesystems without hard links: exclusive create, written in one go
        try:
            write_new(dest, data, 0o600)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)
