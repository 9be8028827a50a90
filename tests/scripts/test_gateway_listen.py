"""With detour's users (or mitmproxy's proxyauth), clients authenticate: a network listen
address is allowed without detour_allow_remote, and network peers are served (each still
needs credentials); `detour up --host 0.0.0.0` runs without --allow-remote."""

import logging

from mitmproxy.addons.proxyauth import ProxyAuth
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from addons.settings import DetourSettings
from addons.users import User, hash_secret, users_path, write_users
from scripts.proxy import up_argv
from tests.scripts.test_proxy import execs, fake_router  # noqa: F401 - fixtures


def test_users_allow_a_network_listen_address_and_peers(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    write_users(users_path(tmp_path), {"a": User("a", hash_secret("s"))})
    settings = DetourSettings()
    with taddons.context(Proxyserver(), ProxyAuth(), settings) as tctx:
        tctx.configure(settings, detour_home=str(tmp_path), listen_host="0.0.0.0")
        assert "clients authenticate" in caplog.text
        assert "without authentication" not in caplog.text
        tctx.configure(settings, proxyauth=f"@{users_path(tmp_path)}")  # as the gateway does
        client = tflow.tclient_conn()
        client.peername = ("192.0.2.10", 40000)
        settings.client_connected(client)
        assert client.error is None
        settings.runtime.store.close()


def test_up_on_the_network_with_users_needs_no_allow_remote(detour, home, confdir, fake_router,
                                                            execs):
    home.mkdir()
    write_users(users_path(home), {"a": User("a", hash_secret("s"))})
    result = detour("up", "--host", "0.0.0.0")
    assert "clients authenticate" in result.stderr and "WARNING" not in result.stderr
    assert execs == [up_argv(home=home, confdir=confdir, host="0.0.0.0")]
