import shutil
from pathlib import Path

import pytest

from certs.ca import ensure_ca


@pytest.fixture(scope="session")
def _made_confdir(tmp_path_factory) -> Path:
    confdir = tmp_path_factory.mktemp("made") / "confdir"
    ensure_ca(confdir)
    return confdir


@pytest.fixture
def existing_confdir(_made_confdir, tmp_path) -> Path:
    """A confdir holding a CA made by ensure_ca (made once per session, copied per test)."""
    dest = tmp_path / "existing"
    shutil.copytree(_made_confdir, dest)
    return dest
