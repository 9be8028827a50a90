"""The provider leg keeps no cookies: one httpx client serves every account behind a way out,
so a cookie set in one account's answer (a vendor's session or load-balancer cookie) must never
be sent with another account's request."""

import httpx

from addons.config import parse_config
from addons.forwarding import Forwarder
from addons.routing import CooldownBook

CONFIG = """
providers:
  p: {kind: openai, base_url: "https://provider.test/v1", api_keys: [key-a, key-b]}
routes:
  "*": [p/m]
"""


async def test_a_cookie_one_answer_sets_is_not_sent_again():
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, json={}, headers={
            "set-cookie": "session=from-account-a; Domain=provider.test; Path=/"})

    config = parse_config(CONFIG)
    fwd = Forwarder(config, CooldownBook(), transport=httpx.MockTransport(answer))
    client = fwd.client(config.providers["p"])
    for key in ("key-a", "key-b"):
        r = await client.post("https://provider.test/v1/chat/completions",
                              headers={"authorization": f"Bearer {key}"}, content=b"{}")
        assert r.status_code == 200
    await client.aclose()
    assert seen == [None, None]
    assert not list(client.cookies.jar)
