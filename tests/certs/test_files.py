import stat

import pytest

from certs.files import publish_exclusive, write_atomic, write_new


def test_write_new_sets_the_mode_whatever_the_umask(tmp_path):
    write_new(tmp_path / "pub", b"x", 0o644)
    write_new(tmp_path / "key", b"k", 0o600)
    assert stat.S_IMODE((tmp_path / "pub").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_new(tmp_path / "key", b"other", 0o600)
    assert (tmp_path / "key").read_bytes() == b"k"


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path):
    dest = tmp_path / "f"
    write_atomic(dest, b"one", 0o644)
    write_atomic(dest, b"two", 0o600)
    assert dest.read_bytes() == b"two"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_publish_exclusive_never_overwrites(tmp_path):
    dest = tmp_path / "ca.pem"
    assert publish_exclusive(dest, b"first")
    assert not publish_exclusive(dest, b"second")
    assert dest.read_bytes() == b"first"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["ca.pem"]


def test_publish_exclusive_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("certs.files.os.link", no_links)
    dest = tmp_path / "ca.pem"
    assert publish_exclusive(dest, b"first")
    assert not publish_exclusive(dest, b"second")
    assert dest.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["ca.pem"]
