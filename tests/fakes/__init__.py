"""Loopback fakes of the vendors' APIs, for tests and benchmarks.

- `server.py`: `FakeServer` (asyncio + h11 in a thread; TLS; request record; reply queue;
  abort counters) and the subprocess CLI.
- `replies.py`: the scripted replies (`Text`, `ToolCall(s)`, `Events`, `Status`, `Garbage`,
  `CutAfter`, `StreamError`, `Stall`, `Linger`) and `Usage`.
- `openai_provider.py`: `FakeOpenAI`, Chat Completions.
- `openai_responses_provider.py`: `FakeOpenAIResponses`, the Responses API.
- `anthropic_vendor.py`: `FakeAnthropic`, Messages.
"""
