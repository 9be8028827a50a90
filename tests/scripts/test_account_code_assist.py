"""`detour account test` for a Google login of a `kind: gemini-cli` provider: Code Assist
lists no models, so the cheap real call is the login's project lookup (loadCodeAssist), whose
answer is kept in the account's row; a token Code Assist refuses fails the test, unnamed."""

import time

import pytest

from addons.credentials.store import OAUTH, AccountStore
from tests.fakes.code_assist import FakeCodeAssist
from tests.fakes.oauth_server import FakeOAuth


@pytest.fixture(autouse=True)
def _file_key(monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth(prefix="ya29.fake") as a:
        yield a


@pytest.fixture(scope="module")
def fake(auth):
    with FakeCodeAssist(auth) as f:
        yield f


def test_the_project_lookup_is_the_test_and_is_kept(detour, home, auth, fake):
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(
        f'providers:\n  gemini: {{kind: gemini-cli, base_url: "{fake.base_url}"}}\n')
    store = AccountStore(home / "detour.db")
    tokens = auth.grant()
    project = fake.onboard(tokens["access_token"])
    acct = store.add("gemini", "main", OAUTH, tokens, vendor="gemini",
                     expires_at=time.time() + 3600)
    out = detour("account", "test", "gemini", "main").output
    assert f"ok (Code Assist project {project}, tier free-tier" in out
    assert (store.by_id(acct.id).project_id, store.by_id(acct.id).plan) == (project,
                                                                            "free-tier")
    auth.revoke_access(tokens["access_token"])
    out = detour("account", "test", "gemini", "main", expect=1).output
    assert "HTTP 401" in out and tokens["access_token"] not in out
