"""What the client asked for is honoured or refused, never silently dropped: through a real
mitmdump with the router, real clients (the openai SDK) and the loopback fakes."""

import base64
import copy
import json

import httpx2
import openai
import pydantic
import pytest

from tests.captures import anthropic_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, capture, start_proxy
from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import ToolCall

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages?beta=true"
ANTHROPIC_HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
                     "user-agent": "claude-cli/2.1.197 (test)"}
PDF = base64.b64encode(b"%PDF-1.4\n% a tiny test document\n%%EOF\n").decode()


@pytest.fixture(scope="module")
def caching_openai():
    with FakeOpenAI(prefix_cache=True) as fake:
        yield fake


@pytest.fixture(scope="module")
def caching_anthropic():
    with FakeAnthropic(prefix_cache=True) as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, caching_openai, caching_anthropic):
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{caching_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  ant: {{kind: anthropic, base_url: "{caching_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
routes:
  gpt-to-claude: [ant/claude-fake-sonnet]
  claude-to-chat: [chat/fake-model]
  claude-to-ant: [ant/claude-fake-sonnet]
  chat-then-passthrough: [chat/fake-model, passthrough]
  "*": [passthrough]
vendors:
  api.anthropic.com: "{caching_anthropic.base_url}"
  api.openai.com: "{caching_openai.base_url}"
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(caching_openai, caching_anthropic):
    caching_openai.clear()
    caching_anthropic.clear()
    yield


@pytest.fixture
def sdk(proxy):
    """The real openai SDK, through the proxy, trusting only its CA."""
    http_client = httpx2.Client(proxy=proxy.mitm.url, verify=proxy.ssl_context, trust_env=False,
                                timeout=20)
    with openai.OpenAI(api_key=CLIENT_KEY, http_client=http_client, max_retries=0) as client:
        yield client


class Weather(pydantic.BaseModel):
    city: str
    celsius: float


def test_parse_with_a_pydantic_model_through_an_anthropic_provider(sdk, caching_anthropic):
    caching_anthropic.enqueue(ToolCall("Weather", {"city": "Oslo", "celsius": -3.5}))
    done = sdk.chat.completions.parse(model="gpt-to-claude", response_format=Weather,
                                      messages=[{"role": "user", "content": "Oslo weather?"}])
    assert done.choices[0].message.parsed == Weather(city="Oslo", celsius=-3.5)
    assert done.choices[0].finish_reason == "stop"
    sent = caching_anthropic.requests[-1].json
    assert sent["tool_choice"] == {"type": "tool", "name": "Weather"}
    assert sent["tools"][-1]["name"] == "Weather"
    assert set(sent["tools"][-1]["input_schema"]["properties"]) == {"city", "celsius"}


def test_json_object_streamed_becomes_content_deltas(sdk, caching_anthropic):
    caching_anthropic.enqueue(ToolCall("json_answer", {"answer": [1, 2, 3]}, pieces=4))
    stream = sdk.chat.completions.create(
        model="gpt-to-claude", response_format={"type": "json_object"}, stream=True,
        messages=[{"role": "user", "content": "numbers as JSON"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == {"answer": [1, 2, 3]}
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1


@pytest.mark.parametrize("extra, named", [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
                                          ({"top_logprobs": 3, "logprobs": True}, "logprobs")])
def test_what_cannot_be_answered_is_refused_naming_the_field(sdk, caching_anthropic, extra,
                                                              named):
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="gpt-to-claude",
                                    messages=[{"role": "user", "content": "hi"}], **extra)
    assert named in err.value.body["message"]
    assert err.value.body["type"] == "invalid_request_error"
    assert caching_anthropic.requests == []


def test_cosmetic_fields_are_dropped_and_named(proxy, sdk, caching_anthropic):
    raw = sdk.chat.completions.with_raw_response.create(
        model="gpt-to-claude", messages=[{"role": "user", "content": "hi"}], seed=7,
        user="u-1", frequency_penalty=0.5, presence_penalty=0.1, logit_bias={"50256": -100})
    assert raw.parse().choices[0].message.content
    sent = caching_anthropic.requests[-1].json
    assert not {"seed", "user", "frequency_penalty", "presence_penalty", "logit_bias"} & set(sent)
    row = proxy.row_of(raw.http_response)
    dropped = json.loads(row["route"])[-1]["dropped"]
    assert {"seed", "user", "frequency_penalty", "presence_penalty", "logit_bias"} <= set(dropped)


def _pdf_request(model: str) -> dict:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": PDF}, "title": "tiny.pdf"},
        {"type": "text", "text": "Summarise"}]}]}


def test_a_pdf_document_reaches_a_chat_provider_as_a_file_part(proxy, caching_openai):
    with proxy.client() as c:
        r = c.post(ANTHROPIC_URL, headers=ANTHROPIC_HEADERS, json=_pdf_request("claude-to-chat"))
    assert r.status_code == 200, r.text
    content = caching_openai.requests[-1].json["messages"][-1]["content"]
    assert content[0] == {"type": "file", "file": {
        "filename": "tiny.pdf", "file_data": "data:application/pdf;base64," + PDF}}


def test_a_request_one_candidate_cannot_take_goes_to_the_next(proxy, caching_openai,
                                                              caching_anthropic):
    body = _pdf_request("chat-then-passthrough")
    body["messages"][0]["content"][0]["source"] = {"type": "file", "file_id": "file_1"}
    with proxy.client() as c:  # passthrough: the client's own key, which the vendor knows
        r = c.post(ANTHROPIC_URL, headers=dict(ANTHROPIC_HEADERS, **{"x-api-key": VENDOR_KEY}),
                   json=body)
    assert r.status_code == 200, r.text
    assert caching_openai.requests == [] and len(caching_anthropic.requests) == 1
    route = json.loads(proxy.row_of(r)["route"])
    assert "chat/" in route[0]["skipped"] and "document source" in route[0]["skipped"]


def test_a_request_no_candidate_can_take_is_refused_naming_why(proxy, caching_openai):
    body = _pdf_request("claude-to-chat")
    body["messages"][0]["content"][0]["source"] = {"type": "file", "file_id": "file_1"}
    with proxy.client() as c:
        r = c.post(ANTHROPIC_URL, headers=ANTHROPIC_HEADERS, json=body)
    assert r.status_code == 400
    assert r.json()["type"] == "error" and "document source" in r.json()["error"]["message"]
    assert caching_openai.requests == []


def test_an_azure_stream_without_id_and_model_gets_both(proxy, caching_openai, monkeypatch):
    original = FakeOpenAI._chunks  # Azure's chunks: id "" and model ""
    monkeypatch.setattr(FakeOpenAI, "_chunks", staticmethod(
        lambda answer, _id, created, _model, usage: original(answer, "", created, "", usage)))
    body = {"model": "claude-to-chat", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with proxy.client() as c:
        r = c.post(ANTHROPIC_URL, headers=ANTHROPIC_HEADERS, json=body)
    events = anthropic_events(r.content)
    start = events[0]
    assert start.id.startswith("msg_") and len(start.id) > 8
    assert start.model == "claude-to-chat"


def _conversation() -> list[dict]:
    """Three turns of one Claude Code conversation: the tool-call and tool-result captures, then
    the answer and a new question; each with its own billing header (cch varies per call)."""
    first, second = capture("tool-call"), capture("tool-result")
    third = copy.deepcopy(second)
    third["messages"] += [{"role": "assistant", "content": "hi is printed"},
                          {"role": "user", "content": "Thanks, now run echo bye"}]
    header = third["system"][0]["text"]
    third["system"][0]["text"] = header.replace(header.split("cch=")[1], "77777;")
    return [first, second, third]


@pytest.mark.parametrize("model, fake_name", [("claude-to-chat", "chat"),
                                              ("claude-to-ant", "ant")])
def test_prompt_caches_stay_warm_over_a_conversation(proxy, caching_openai, caching_anthropic,
                                                     model, fake_name):
    fake = caching_openai if fake_name == "chat" else caching_anthropic
    rows = []
    with proxy.client() as c:
        for turn in _conversation():
            turn = dict(turn, model=model, stream=False)
            r = c.post(ANTHROPIC_URL, headers=ANTHROPIC_HEADERS, json=turn)
            assert r.status_code == 200, r.text
            rows.append(proxy.row_of(r))
    sent = [q.json for q in fake.requests]
    assert all("x-anthropic-billing-header" not in json.dumps(b) for b in sent)
    prompt = [len(fake.prompt_text(b)) // 4 for b in sent]
    cached = [row["cache_read_tokens"] for row in rows]
    assert cached[0] == 0
    # turn N reads every earlier turn's prompt from the cache (all but its last message)
    assert cached[1] >= prompt[0] * 0.9 and cached[2] >= prompt[1] * 0.9, (cached, prompt)
    assert "billing-header" in rows[0]["route"]
