"""A loopback OpenAI Responses API provider (`POST .../responses`), as Codex and the OpenAI
SDK's `client.responses.create` are answered.

    with FakeOpenAIResponses() as fake:             # keys={"sk-fake-provider-key"}
        base_url = fake.base_url + "/v1"            # any prefix works

Endpoints (any path prefix):
- `POST .../responses`: `Authorization: Bearer <key>` with a key in `fake.keys`, else 401 in
  OpenAI's error format (shared with `FakeOpenAI`); a body that is not a JSON object -> 400;
  with `validate` (the default) also 400 for no `model`, no `input` (a string or a list), an
  `input` item that is not an object, a `function_call_output` answering no earlier
  `function_call`/`custom_tool_call`. Otherwise the next queued reply, else the default reply.
- `GET .../models`: as `FakeOpenAI`.
- anything else: 404 `Invalid URL (METHOD PATH)`.

Rendering, as the captures in tests/data/captures/codex*.responses.*.response.txt show:
- whole: a `response` object {id, object, created_at, model, status: "completed", output,
  usage} whose output holds an optional `reasoning` item (summary_text), a `message` item
  (`output_text` content) when there is text, and one `function_call` item per call;
- streamed: `event: <type>` + `data: {"type", "sequence_number", ...}` events numbered from 0:
  `response.created`, `response.in_progress`, then per output item `response.output_item.added`,
  its deltas (`response.reasoning_summary_text.delta`, `response.output_text.delta` between
  `content_part.added`/`.done`, `response.function_call_arguments.delta`) and their `.done`,
  `response.output_item.done`; last `response.completed` with the whole response and usage
  {input_tokens (cached included), input_tokens_details.cached_tokens, output_tokens,
  output_tokens_details.reasoning_tokens, total_tokens}.
- `StreamError`: an `error` event {type, code, message, param, sequence_number} after the
  first events, then the end (no `response.completed`); not streamed: an error status.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterable, Iterator

from .openai_provider import FakeOpenAI
from .replies import Answer, Events, StreamError, Text, ToolCalls
from .server import JSON_TYPE, SSE_TYPE, Plan, Received, Stream, Whole, dumps, run_cli

_CALL_ITEMS = ("function_call", "custom_tool_call")
_OUTPUT_ITEMS = ("function_call_output", "custom_tool_call_output")


def usage_object(answer: Answer) -> dict:
    counts = answer.counts
    return {"input_tokens": counts.prompt,
            "input_tokens_details": {"cached_tokens": counts.cached},
            "output_tokens": counts.completion,
            "output_tokens_details": {"reasoning_tokens": counts.reasoning},
            "total_tokens": counts.prompt + counts.completion}


def responses_request_problem(body: dict) -> tuple[str, str | None] | None:
    """What OpenAI would refuse in a Responses request: (message, param), or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "Missing required parameter: 'model'.", "model"
    items = body.get("input")
    if isinstance(items, str):
        return None
    if not isinstance(items, list):
        return "Missing required parameter: 'input'.", "input"
    called: set = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return f"Invalid type for 'input[{i}]': expected an object.", f"input[{i}]"
        kind = item.get("type")
        if kind in _CALL_ITEMS:
            called.add(item.get("call_id"))
        elif kind in _OUTPUT_ITEMS and item.get("call_id") not in called:
            return (f"No tool call found for function call output with call_id "
                    f"{item.get('call_id')}.", "input")
    return None


class FakeOpenAIResponses(FakeOpenAI):
    """A fake OpenAI Responses provider (see the module docstring); auth, errors and ids as
    `FakeOpenAI`."""

    default_text = "Hello from the fake Responses provider"

    def plan(self, received: Received) -> Plan:
        route = received.route
        if received.method == "POST" and route.endswith("/responses"):
            return self._responses(received)
        if received.method == "GET" and route.endswith("/models"):
            return super().plan(received)
        return self.error_plan(404, f"Invalid URL ({received.method} {route})", code=None)

    @staticmethod
    def prompt_parts(body: dict) -> list:
        instructions = body.get("instructions")
        items = body.get("input")
        items = [items] if isinstance(items, str) else list(items or [])
        return ([] if instructions is None else [instructions]) + list(
            body.get("tools") or []) + items

    def _responses(self, received: Received) -> Plan:
        if problem := self._auth_problem(received):
            return problem
        body = received.json
        if body is None:
            return self.error_plan(400, "We could not parse the JSON body of your request.",
                                   code=None)
        if self.validate and (problem := responses_request_problem(body)):
            message, param = problem
            return self.error_plan(400, message, param=param, code=None)
        return self.plan_reply(self.take_reply(received), received, body.get("stream") is True)

    def render(self, reply: Text | ToolCalls | Events | StreamError, received: Received,
               stream: bool) -> Plan:
        if isinstance(reply, StreamError) and not stream:
            return self.error_plan(500, reply.message, kind=reply.kind)
        answer = self.answer_of(reply, received)
        model = (received.json or {}).get("model") or "gpt-fake-1"
        head = {"id": self.new_id("resp_fake"), "object": "response",
                "created_at": int(time.time()), "model": model}
        items = self._items(answer)
        if not stream:
            whole = {**head, "status": "completed", "output": [i for i, _ in items],
                     "usage": usage_object(answer)}
            return Whole(200, self._headers(JSON_TYPE), dumps(whole),
                         delay=answer.delay * max(1, len(answer.text_pieces)))
        events: Iterable[dict] = self._events(answer, head, items)
        if isinstance(reply, StreamError):
            events = itertools.chain(itertools.islice(events, reply.after), (
                {"type": "error", "code": reply.kind or "server_error",
                 "message": reply.message or "The server had an error while processing your "
                 "request. Sorry about that!", "param": None},))
        numbered = (b"event: " + e["type"].encode() + b"\ndata: "
                    + dumps({"type": e["type"], "sequence_number": n,
                             **{k: v for k, v in e.items() if k != "type"}}) + b"\n\n"
                    for n, e in enumerate(events))
        return Stream(200, self._headers(SSE_TYPE, {"cache-control": "no-cache"}), numbered,
                      delay=answer.delay)

    def _items(self, answer: Answer) -> list[tuple[dict, list[dict]]]:
        """The output items, whole, each with its streamed deltas (without output_index)."""
        out = []
        if answer.reasoning:
            rid = self.new_id("rs_fake")
            summary = [{"type": "summary_text", "text": answer.reasoning}]
            out.append(({"type": "reasoning", "id": rid, "summary": summary},
                        [{"type": "response.reasoning_summary_part.added", "item_id": rid,
                          "summary_index": 0, "part": {"type": "summary_text", "text": ""}}]
                        + [{"type": "response.reasoning_summary_text.delta", "item_id": rid,
                            "summary_index": 0, "delta": p} for p in answer.reasoning_pieces]
                        + [{"type": "response.reasoning_summary_text.done", "item_id": rid,
                            "summary_index": 0, "text": answer.reasoning},
                           {"type": "response.reasoning_summary_part.done", "item_id": rid,
                            "summary_index": 0, "part": summary[0]}]))
        pieces = answer.text_pieces
        if answer.repeat:
            pieces = pieces + (answer.repeat[0],) * answer.repeat[1]
        if answer.text or not answer.calls:
            mid = self.new_id("msg_fake")
            part = {"type": "output_text", "text": answer.text, "annotations": []}
            at = {"item_id": mid, "content_index": 0}
            out.append(({"type": "message", "id": mid, "status": "completed",
                         "role": "assistant", "content": [part]},
                        [{"type": "response.content_part.added", **at,
                          "part": {**part, "text": ""}}]
                        + [{"type": "response.output_text.delta", **at, "delta": p,
                            "logprobs": []} for p in pieces]
                        + [{"type": "response.output_text.done", **at, "text": answer.text,
                            "logprobs": []},
                           {"type": "response.content_part.done", **at, "part": part}]))
        for c in answer.calls:
            fid = self.new_id("fc_fake")
            out.append(({"type": "function_call", "id": fid, "status": "completed",
                         "name": c.name, "call_id": c.id, "arguments": c.arguments},
                        [{"type": "response.function_call_arguments.delta", "item_id": fid,
                          "delta": f} for f in c.fragments]
                        + [{"type": "response.function_call_arguments.done", "item_id": fid,
                            "arguments": c.arguments}]))
        return out

    @staticmethod
    def _events(answer: Answer, head: dict, items: list) -> Iterator[dict]:
        yield {"type": "response.created", "response": {**head, "status": "in_progress",
                                                        "output": []}}
        yield {"type": "response.in_progress", "response": {**head, "status": "in_progress",
                                                            "output": []}}
        for index, (item, deltas) in enumerate(items):
            opened = {**item, "status": "in_progress"} if "status" in item else dict(item)
            if item["type"] == "message":
                opened["content"] = []
            elif item["type"] == "function_call":
                opened["arguments"] = ""
            elif item["type"] == "reasoning":
                opened["summary"] = []
            yield {"type": "response.output_item.added", "output_index": index, "item": opened}
            for delta in deltas:  # keys in the captures' order
                yield {"type": delta["type"], "item_id": delta["item_id"],
                       "output_index": index, **delta}
            yield {"type": "response.output_item.done", "output_index": index, "item": item}
        yield {"type": "response.completed", "response": {
            **head, "status": "completed", "output": [i for i, _ in items],
            "usage": usage_object(answer)}}


if __name__ == "__main__":
    sys.exit(run_cli(FakeOpenAIResponses))
