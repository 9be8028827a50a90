"""A relayed stream's flow: the relay takes the request from the job, so the flow keeps the
client's body only where it can still be looked at (mitmweb's flow list, a save file, mitmdump
printing bodies); elsewhere it would be held for nothing for the stream's whole life."""

import orjson
import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.addons.save import Save
from mitmproxy.addons.view import View
from mitmproxy.test import taddons

from addons.intercept import Interceptor
from addons.relay import RelayServer
from addons.settings import DetourSettings
from tests.addons.test_intercept import CONFIG, ask, model_call
from tests.harness import running


async def relayed_flow(tmp_path, *extra, **options):
    (tmp_path / "config.yaml").write_text(CONFIG)
    settings = DetourSettings()
    with taddons.context(Proxyserver(), settings, *extra) as tctx:
        tctx.configure(settings, detour_home=str(tmp_path))
        if options:
            tctx.options.update(**options)
        rt = settings.runtime
        interceptor = running(Interceptor(settings))
        await settings._start_relay(RelayServer(rt.forwarder, settings.finished, 1))
        body = ask(stream=True)
        flow = model_call(body)
        try:
            interceptor.requestheaders(flow)
            await interceptor.request(flow)
            assert flow.request.url.startswith(f"http://127.0.0.1:{rt.relay.ports[0]}/relay/")
            [(job, _)] = rt.relay._jobs.values()
            assert job.body == body  # the relay's work has the request, whatever the flow keeps
            return flow.request.content
        finally:
            rt.relay.stop()
            await rt.relay.wait_closed()
            rt.store.close()
            for addon in extra:
                if isinstance(addon, Save):
                    addon.done()  # closes its file


async def test_mitmdump_quiet_keeps_no_body_on_a_relayed_flow(tmp_path):
    assert await relayed_flow(tmp_path) == b""


@pytest.mark.parametrize("where", ["view", "save", "flow_detail"])
async def test_a_flow_someone_can_look_at_keeps_the_clients_body(tmp_path, where):
    if where == "view":  # mitmweb, the console
        content = await relayed_flow(tmp_path, View())
    elif where == "save":
        content = await relayed_flow(tmp_path, Save(),
                                     save_stream_file=str(tmp_path / "flows.mitm"))
    else:  # mitmdump printing bodies
        from mitmproxy.addons.dumper import Dumper
        content = await relayed_flow(tmp_path, Dumper(), flow_detail=3)
    assert orjson.loads(content) == ask(stream=True)
