"""The gateway and the request log take the endpoints as configured (config `chat_hosts`), as the
interceptor does: a gateway user's Qwen Code call to a configured Chat host is a vendor call,
not a host to allow by hand."""

from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from addons.gateway import Gateway
from addons.request_log import RequestLog
from addons.settings import DetourSettings

CONFIG = "chat_hosts: [chat.example.test]\nroutes: {'*': [passthrough]}\n"


def test_a_configured_chat_host_is_a_vendor_host_for_the_gateway_and_the_log(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(CONFIG)
    settings = DetourSettings()
    gateway, log = Gateway(settings), RequestLog(settings)
    with taddons.context(Proxyserver(), settings) as tctx:
        tctx.configure(settings, detour_home=str(home))
        assert "chat.example.test" in settings.format_table().handled_hosts
        assert gateway.host_allowed("chat.example.test")
        assert gateway.host_allowed("api.anthropic.com")
        assert not gateway.host_allowed("elsewhere.example.test")
        flow = tflow.tflow()
        flow.request.host = "chat.example.test"
        log._requestheaders(flow)
        assert flow.id in log._open
        other = tflow.tflow()
        other.request.host = "elsewhere.example.test"
        log._requestheaders(other)
        assert other.id not in log._open
        settings.runtime.store.close()
