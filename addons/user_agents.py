"""Which client tool sent a call, and its version, read from its User-Agent.

The usage row keeps the whole User-Agent (`client`) and, normalised, the tool (`client_tool`)
and its version (`client_version`), so reports group Claude Code 2.1.197 with 2.1.198. The
table is data: the first pattern that matches wins; an unknown agent keeps its first product
token (`Foo/1.2 ...` -> tool `Foo`, version `1.2`), an empty one gives ("", "").
"""

import functools
import re

# (tool, pattern): the pattern's group "v" is the version. The real CLIs' agents as captured:
#   claude-cli/2.1.197 (external, sdk-cli)
#   codex_exec/0.169.0 (Debian 12.0.0; x86_64) dumb (codex_exec; 0.169.0); codex_cli_rs/...
#   GeminiCLI-tui/0.61.0/gemini-2.5-pro (linux; x64; terminal); GeminiCLI/0.61.0/...
#   QwenCode/0.15.10 (linux; x64)
KNOWN_AGENTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (tool, re.compile(pattern)) for tool, pattern in (
        ("claude-code", r"^claude-cli/(?P<v>[^\s(]+)"),
        ("codex", r"^codex_(?:cli_rs|exec|vscode|[a-z_]+)/(?P<v>[^\s(]+)"),
        ("gemini-cli", r"^GeminiCLI(?:-[\w-]+)?/(?P<v>[^\s(/]+)"),
        ("qwen-code", r"^QwenCode(?:-[\w-]+)?/(?P<v>[^\s(/]+)"),
        ("openai-python", r"^OpenAI/Python (?P<v>\S+)"),
        ("openai-js", r"^OpenAI/JS (?P<v>\S+)"),
        ("anthropic-python", r"^Anthropic/Python (?P<v>\S+)"),
        ("anthropic-js", r"^Anthropic/JS (?P<v>\S+)"),
        ("google-genai", r"google-genai-sdk/(?P<v>[^\s(]+)"),
        ("curl", r"^curl/(?P<v>\S+)"),
        ("python-httpx", r"^python-httpx/(?P<v>\S+)"),
        ("python-requests", r"^python-requests/(?P<v>\S+)"),
        ("aiohttp", r"^Python/[\d.]+ aiohttp/(?P<v>\S+)"),
        ("go-http-client", r"^Go-http-client/(?P<v>\S+)"),
        ("node-fetch", r"^node-fetch(?:/(?P<v>\S+))?"),
    ))
_PRODUCT = re.compile(r"^(?P<tool>[^\s/()]+)(?:/(?P<v>[^\s/()]+))?")


@functools.lru_cache(maxsize=256)
def client_tool(user_agent: str) -> tuple[str, str]:
    """(tool, version) of a User-Agent: a known tool's normalised name, else its first product
    token as written; the version is "" when the agent has none."""
    user_agent = user_agent.strip()
    for tool, pattern in KNOWN_AGENTS:
        m = pattern.search(user_agent)
        if m:
            return tool, m.group("v") or ""
    m = _PRODUCT.match(user_agent)
    if not m:
        return "", ""
    return m.group("tool")[:60], (m.group("v") or "")[:40]
