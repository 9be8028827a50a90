"""A stored login's token refresh leaves the way its provider's calls do: through the
provider's outbound proxy. A gateway that sent API calls through the configured proxy but
refreshed tokens directly could not refresh at all where only the proxy reaches the vendor
(CLIProxyAPI #2784; 9router #21, LiteLLM #11389 asked for proxies on OAuth calls too). The
proxy here is a plain mitmdump whose saved flows show what it carried."""

import time

from addons.credentials.store import OAUTH, AccountStore
from addons.credentials.vault import Vault
from tests.e2e.conftest import start_proxy
# auth, vendor: the OAuth server and the Anthropic fake taking its tokens (module fixtures)
from tests.e2e.test_oauth_accounts import BODY, HEADERS, URL, auth, env, vendor  # noqa: F401
from tests.e2e.test_outbound_proxy import ForwardProxy


def test_an_expired_login_is_refreshed_through_the_providers_proxy(confdir, tmp_path, auth,
                                                                    vendor):
    home = tmp_path / "home"
    home.mkdir()
    store = AccountStore(home / "detour.db", Vault(home, "file"))
    store.add("claude", "main", OAUTH, auth.grant(), vendor="claude",
              expires_at=time.time() - 60)  # expired: the first call refreshes it
    with ForwardProxy(confdir, tmp_path, "egress") as egress:
        config = f"""
providers:
  claude: {{kind: anthropic, base_url: "{vendor.base_url}",
           proxy: "http://127.0.0.1:{egress.mitm.port}"}}
routes:
  claude-sub: [claude/*]
"""
        refreshes = auth.refresh_calls
        proxy = start_proxy(confdir, home, config, env=env(auth))
        try:
            with proxy.client() as client:
                r = client.post(URL, json=BODY, headers=HEADERS)
            assert r.status_code == 200, r.text
        finally:
            proxy.mitm.stop()
        assert auth.refresh_calls == refreshes + 1
        carried = egress.urls()
    assert carried == [auth.url("/v1/oauth/token"), f"{vendor.base_url}/v1/messages"]
