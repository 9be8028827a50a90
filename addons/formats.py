"""The format table: the one place that says which vendor call is which client format, and how
each provider kind is spoken to. Adding a format is a codec module in translators/ plus rows here.

- `ENDPOINTS`: host + path (exact, or a pattern with named parts such as
  `/v1beta/models/{model}:{method}`) -> the client format, what kind of endpoint it is, and how
  its model and stream flag are read (a body field, a path part, a query parameter). Only these
  are intercepted; every other path of a handled host passes through untouched, and hosts with
  no endpoint are tunnelled without TLS interception.
- `PROVIDER_KINDS`: a provider's `kind:` in config -> its codec, the path under its base_url (a
  template: `{model}` is the upstream model), how its credential goes on, its fixed headers and
  the client headers a same-format call keeps.
- `DIALECT_HOSTS`: a Chat provider's dialect (translators/openai_chat.Dialect) when config names
  none, from its base_url's host; `DIALECT_CREDENTIALS` where a dialect's key goes elsewhere.
- `VENDOR_ORIGINS`: where passthrough sends each vendor host (config's `vendors:` overrides).

Data only: nothing here sends, decides a route or reads mitmproxy.
"""

import base64
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from translators import anthropic, gemini, gemini_code_assist, ollama, ollama_generate
from translators import antigravity, openai_chat, openai_responses

# ---------------------------------------------------------------- how a value is read


@dataclass(frozen=True, slots=True)
class BodyField:
    """A top-level field of the JSON body (`model`, `stream`); `default` when it is absent
    (Ollama streams unless told not to)."""

    name: str
    default: Any = None


@dataclass(frozen=True, slots=True)
class PathPart:
    """A named part of the endpoint's path pattern; with `equals`, a flag: does it equal that
    (`{method}` == `streamGenerateContent`)."""

    name: str
    equals: str | None = None


@dataclass(frozen=True, slots=True)
class QueryParam:
    """A query parameter; with `equals`, a flag (`alt=sse`)."""

    name: str
    equals: str | None = None


@dataclass(frozen=True, slots=True)
class Fixed:
    """A value the endpoint itself says (`generateContent` is never streamed)."""

    value: Any


Source = BodyField | PathPart | QueryParam | Fixed

# what kind of call an endpoint takes: a model call (routed, translated, counted), or a call
# about models that detour answers itself when the route leaves the vendor (addons/side_calls.py)
MODEL_CALL = "model-call"
COUNT_TOKENS = "count-tokens"
MODEL_LIST = "model-list"
# the WebSocket mode of a model endpoint (Codex opens one before each turn): refused with 426,
# which makes the client fall back to HTTPS at once (addons/side_calls.py)
SOCKET_UPGRADE = "socket-upgrade"
# a history compaction (`POST /v1/responses/compact`): answered by the routed provider
COMPACTION = "compaction"
# a client's setup call (Gemini CLI's loadCodeAssist, onboardUser, ...): passed through while
# its vendor account is used, answered locally when the routes leave the vendor
SETUP_CALL = "setup-call"
# Codex's ChatGPT account check (`wham/accounts/check`), needed before its first prompt:
# answered from the client's own token when its models are all rerouted
ACCOUNT_CHECK = "account-check"
CODEX_MODELS_PATH = "/backend-api/codex/models"  # its list has Codex's own shape


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    path: str  # exact, or with {name} parts (a part never spans "/" or ":")
    client_format: str  # a codec's NAME
    kind: str = MODEL_CALL
    method: str = "POST"
    model: Source = BodyField("model")
    stream: Source = BodyField("stream")
    # whether a streamed answer is framed as server-sent events (Gemini's streamGenerateContent
    # without `alt=sse` answers one JSON array, written element by element)
    sse: Source = Fixed(True)
    pattern: re.Pattern | None = field(default=None, compare=False)

    @staticmethod
    def make(host: str, path: str, client_format: str, **kw) -> "Endpoint":
        pattern = None
        if "{" in path:
            regex = "".join(
                f"(?P<{piece[1:-1]}>[^/:]+)" if piece.startswith("{") else re.escape(piece)
                for piece in re.split(r"(\{\w+\})", path) if piece)
            pattern = re.compile(regex)
        return Endpoint(host, path, client_format, pattern=pattern, **kw)


@dataclass(frozen=True, slots=True)
class ClientCall:
    """One request matched to its endpoint: reads its model and stream flag as the table says."""

    endpoint: Endpoint
    path: str  # as the client sent it, query included
    parts: dict[str, str]  # the path pattern's named parts

    @property
    def client_format(self) -> str:
        return self.endpoint.client_format

    def model(self, body: dict) -> Any:
        """The requested model (whatever the client put there: the caller checks it)."""
        return self._read(self.endpoint.model, body)

    def stream(self, body: dict) -> bool:
        return self._read(self.endpoint.stream, body) is True

    @property
    def sse(self) -> bool:
        """A streamed answer goes to the client as server-sent events (else, Gemini's: as the
        elements of one JSON array)."""
        return self._read(self.endpoint.sse, {}) is True

    def _read(self, source: Source, body: dict) -> Any:
        t = type(source)
        if t is BodyField:
            return body.get(source.name, source.default)
        if t is Fixed:
            return source.value
        if t is PathPart:
            value = self.parts.get(source.name)
        else:
            values = parse_qs(self.path.partition("?")[2]).get(source.name)
            value = values[-1] if values else None
        return value if source.equals is None else value == source.equals


# ---------------------------------------------------------------- client formats

CODECS: dict[str, ModuleType] = {m.NAME: m for m in (anthropic, openai_chat, openai_responses,
                                                      gemini, gemini_code_assist, ollama,
                                                      ollama_generate)}

GEMINI_HOST = "generativelanguage.googleapis.com"


def _gemini_endpoints(version: str) -> tuple[Endpoint, ...]:
    """The Gemini API under one version prefix: the model is in the path, and so is whether
    the answer streams."""
    models = f"/{version}/models"
    in_path = PathPart("model")
    return (
        Endpoint.make(GEMINI_HOST, models + "/{model}:generateContent", gemini.NAME,
                      model=in_path, stream=Fixed(False)),
        Endpoint.make(GEMINI_HOST, models + "/{model}:streamGenerateContent", gemini.NAME,
                      model=in_path, stream=Fixed(True), sse=QueryParam("alt", "sse")),
        Endpoint.make(GEMINI_HOST, models + "/{model}:countTokens", gemini.NAME,
                      kind=COUNT_TOKENS, model=in_path, stream=Fixed(False)),
        Endpoint.make(GEMINI_HOST, models, gemini.NAME, kind=MODEL_LIST, method="GET",
                      model=Fixed("*"), stream=Fixed(False)),
    )


CODE_ASSIST_HOST = "cloudcode-pa.googleapis.com"
GOOGLE_OAUTH_HOST = "oauth2.googleapis.com"


def _code_assist_endpoints() -> tuple[Endpoint, ...]:
    """Gemini CLI logged in with Google: the model calls in their envelope (the model is a body
    field), its token count, and its setup calls (any other `/v1internal:<method>`)."""
    name = gemini_code_assist.NAME
    return (
        Endpoint.make(CODE_ASSIST_HOST, "/v1internal:generateContent", name,
                      stream=Fixed(False)),
        Endpoint.make(CODE_ASSIST_HOST, "/v1internal:streamGenerateContent", name,
                      stream=Fixed(True)),
        Endpoint.make(CODE_ASSIST_HOST, "/v1internal:countTokens", name, kind=COUNT_TOKENS,
                      stream=Fixed(False)),
        Endpoint.make(CODE_ASSIST_HOST, "/v1internal:{method}", name, kind=SETUP_CALL,
                      model=Fixed("*"), stream=Fixed(False)),
        Endpoint.make(CODE_ASSIST_HOST, "/v1internal:{method}", name, kind=SETUP_CALL,
                      method="GET", model=Fixed("*"), stream=Fixed(False)),
        # its check of the cached login's access token, before any of the above
        *(Endpoint.make(GOOGLE_OAUTH_HOST, "/tokeninfo", name, kind=SETUP_CALL, method=m,
                        model=Fixed("*"), stream=Fixed(False)) for m in ("GET", "POST")),
    )


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint.make("api.anthropic.com", "/v1/messages", anthropic.NAME),
    Endpoint.make("api.openai.com", "/v1/chat/completions", openai_chat.NAME),
    Endpoint.make("api.openai.com", "/v1/responses", openai_responses.NAME),
    Endpoint.make("api.openai.com", "/v1/responses", openai_responses.NAME,
                  kind=SOCKET_UPGRADE, method="GET"),
    Endpoint.make("api.openai.com", "/v1/responses/compact", openai_responses.NAME,
                  kind=COMPACTION),
    Endpoint.make("api.openai.com", "/v1/models", openai_chat.NAME, kind=MODEL_LIST,
                  method="GET"),
    # Codex logged in with ChatGPT: the same Responses wire on the ChatGPT backend (request
    # bodies zstd-compressed); its other paths (plugins, wham/* but the account check) pass
    # through. Codex asks codex/models in API-key mode too
    Endpoint.make("chatgpt.com", "/backend-api/codex/responses", openai_responses.NAME),
    Endpoint.make("chatgpt.com", "/backend-api/codex/responses", openai_responses.NAME,
                  kind=SOCKET_UPGRADE, method="GET"),
    Endpoint.make("chatgpt.com", "/backend-api/codex/responses/compact", openai_responses.NAME,
                  kind=COMPACTION),
    Endpoint.make("chatgpt.com", CODEX_MODELS_PATH, openai_responses.NAME, kind=MODEL_LIST,
                  method="GET"),
    Endpoint.make("chatgpt.com", "/backend-api/wham/accounts/check", openai_responses.NAME,
                  kind=ACCOUNT_CHECK, method="GET"),
    *_gemini_endpoints("v1beta"),
    *_gemini_endpoints("v1"),
    *_code_assist_endpoints(),
)


class FormatTable:
    """Endpoints as one lookup: which hosts are handled, a host's format for errors (its first
    endpoint's), and the endpoint a request is for."""

    __slots__ = ("endpoints", "handled_hosts", "host_formats", "_exact", "_patterns")

    def __init__(self, endpoints: tuple[Endpoint, ...]):
        self.endpoints = endpoints
        self.handled_hosts = frozenset(e.host for e in endpoints)
        self.host_formats: dict[str, str] = {}
        for e in endpoints:
            self.host_formats.setdefault(e.host, e.client_format)
        # exact paths are found by one lookup; patterns are tried in the order written, per host
        self._exact = {(e.host, e.method, e.path): e for e in endpoints if e.pattern is None}
        self._patterns: dict[str, tuple[Endpoint, ...]] = {}
        for e in endpoints:
            if e.pattern is not None:
                self._patterns[e.host] = self._patterns.get(e.host, ()) + (e,)

    def client_call(self, host: str, method: str, path: str) -> ClientCall | None:
        """The endpoint a request is for, or None (not one detour takes)."""
        bare = path.partition("?")[0]
        e = self._exact.get((host, method, bare))
        if e is not None:
            return ClientCall(e, path, {})
        for e in self._patterns.get(host, ()):
            if e.method == method and (m := e.pattern.fullmatch(bare)):
                return ClientCall(e, path, m.groupdict())
        return None


# the vendors' own endpoints (config's `chat_hosts` adds more: `with_chat_hosts`)
TABLE = FormatTable(ENDPOINTS)
HANDLED_HOSTS = TABLE.handled_hosts
HOST_FORMATS = TABLE.host_formats
client_call = TABLE.client_call

# hosts that also take a client's key in the URL: (query parameter, the header it equals)
QUERY_CREDENTIALS: dict[str, tuple[str, str]] = {GEMINI_HOST: ("key", "x-goog-api-key")}

# where passthrough sends a vendor host (config `vendors:` overrides)
VENDOR_ORIGINS: dict[str, str] = {host: f"https://{host}" for host in HANDLED_HOSTS}

# Hosts whose OpenAI-compatible Chat endpoint clients call directly (Qwen Code: DashScope with
# an API key, portal.qwen.ai with Qwen OAuth), intercepted as `openai-chat` (config
# `chat_hosts:` replaces this list)
DEFAULT_CHAT_HOSTS = ("dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com", "portal.qwen.ai")
# where they serve Chat: DashScope's compatible mode, and the plain /v1 of the others
CHAT_HOST_PATHS = ("/compatible-mode/v1/chat/completions", "/v1/chat/completions")


def ollama_endpoints(host: str) -> tuple[Endpoint, ...]:
    """Ollama's native API on a host: chat and generate (streamed unless the body says
    `"stream": false`), the model list, and the calls clients make around them (`/api/show`
    for a model's capabilities, `/api/version`): passed to the Ollama server while models
    default to it, else answered here (addons/side_calls.py)."""
    streamed = BodyField("stream", True)
    about = {"model": Fixed("*"), "stream": Fixed(False)}
    return (
        Endpoint.make(host, "/api/chat", ollama.NAME, stream=streamed),
        Endpoint.make(host, "/api/generate", ollama_generate.NAME, stream=streamed),
        Endpoint.make(host, "/api/tags", ollama.NAME, kind=MODEL_LIST, method="GET", **about),
        Endpoint.make(host, "/api/show", ollama.NAME, kind=SETUP_CALL, **about),
        Endpoint.make(host, "/api/version", ollama.NAME, kind=SETUP_CALL, method="GET",
                      **about),
    )


@functools.lru_cache(maxsize=8)
def with_ollama_hosts(table: FormatTable, hosts: tuple[str, ...]) -> FormatTable:
    """`table` plus Ollama's endpoints on these hosts: the targets of mitmproxy's reverse
    modes (`--mode reverse:http://127.0.0.1:11434@11435` makes detour Ollama's endpoint on
    :11435, and the flows it takes are addressed to 127.0.0.1)."""
    if not hosts:
        return table
    return FormatTable(table.endpoints + tuple(e for h in hosts for e in ollama_endpoints(h)))


@functools.lru_cache(maxsize=8)
def with_chat_hosts(hosts: tuple[str, ...]) -> FormatTable:
    """The table of the vendors' endpoints plus the Chat endpoints of these hosts."""
    extra = tuple(Endpoint.make(host, path, openai_chat.NAME) for host in hosts
                  for path in CHAT_HOST_PATHS if host not in HANDLED_HOSTS)
    return FormatTable(ENDPOINTS + extra)


# ---------------------------------------------------------------- provider kinds


@dataclass(frozen=True, slots=True)
class HeaderKey:
    """The credential in a header, after a prefix (`authorization: Bearer <key>`)."""

    name: str
    prefix: str = ""

    def apply(self, secret: str, headers: dict[str, str], query: dict[str, str]) -> None:
        headers[self.name] = self.prefix + secret


@dataclass(frozen=True, slots=True)
class QueryKey:
    """The credential as a query parameter (`?key=<key>`)."""

    name: str

    def apply(self, secret: str, headers: dict[str, str], query: dict[str, str]) -> None:
        query[self.name] = secret


@dataclass(frozen=True, slots=True)
class ChatGPTToken:
    """The ChatGPT backend's credential: a ChatGPT login's access token (a JWT) as Bearer, and
    the ChatGPT account it belongs to (its `chatgpt_account_id` claim) in
    `chatgpt-account-id`, as Codex sends them."""

    def apply(self, secret: str, headers: dict[str, str], query: dict[str, str]) -> None:
        headers["authorization"] = "Bearer " + secret
        account = chatgpt_account_id(secret)
        if account:
            headers["chatgpt-account-id"] = account


@functools.lru_cache(maxsize=64)
def chatgpt_account_id(token: str) -> str | None:
    """The `chatgpt_account_id` claim of a ChatGPT access token (read, not verified: the
    backend verifies it), or None when the token carries none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        account = claims["https://api.openai.com/auth"]["chatgpt_account_id"]
    except (IndexError, ValueError, KeyError, TypeError):
        return None
    return account if isinstance(account, str) and account else None


Credential = HeaderKey | QueryKey | ChatGPTToken
BEARER = HeaderKey("authorization", "Bearer ")


@dataclass(frozen=True, slots=True)
class ProviderKind:
    name: str  # config `kind:`
    codec: ModuleType
    path: str  # under base_url; `{model}` is the upstream model
    credential: Credential
    fixed_headers: tuple[tuple[str, str], ...] = ()
    # client headers a same-format call keeps (they still hold when detour picks the account)
    forwarded_headers: tuple[str, ...] = ()
    dialects: bool = False  # the codec's encode_request takes a translators Dialect
    # body fields the provider insists on, and fields it refuses (left out, named as dropped)
    required_fields: tuple[tuple[str, Any], ...] = ()
    refused_fields: tuple[str, ...] = ()
    # the path of a streamed call, when it is not `path` (Gemini: another method and ?alt=sse)
    stream_path: str | None = None
    # where the provider counts a prompt's tokens (addons/side_calls.py), if it does
    count_path: str | None = None
    # the body is a Code Assist envelope naming the account's Google Cloud project (found
    # once per account: addons/credentials/code_assist.py), put in by the codec's for_project
    account_project: bool = False
    # the base_url when config names none; a subscription login's own API (Copilot's
    # `endpoints.api`, Qwen's `resource_url`) takes its place (addons/credentials/provider.py)
    default_base_url: str = ""
    # headers that depend on the request body sent (Copilot's X-Initiator)
    body_headers: Callable[[dict], dict[str, str]] | None = None
    # the body's last touch, after the account's project is in (Antigravity's envelope)
    finish_body: Callable[[dict], dict] | None = None

    def fit_body(self, body: dict, dropped: tuple[str, ...]) -> tuple[dict, tuple[str, ...]]:
        """`body` as this provider takes it (`body` itself when it already does)."""
        if all(body.get(k) == v for k, v in self.required_fields) and not any(
                k in body for k in self.refused_fields):
            return body, dropped
        gone = tuple(k for k in self.refused_fields if k in body)
        fitted = {k: v for k, v in body.items() if k not in gone}
        fitted.update(self.required_fields)
        return fitted, dropped + gone

    def url(self, base_url: str, model: str, stream: bool = False,
            path: str | None = None) -> str:
        path = path or (self.stream_path if stream and self.stream_path else self.path)
        if "{model}" in path:
            path = path.replace("{model}", quote(model, safe=""))
        return base_url + path


# GitHub Copilot's API, as Copilot Chat in VS Code calls it (the values CLIProxyAPI and
# LiteLLM send): without the editor headers it refuses the Copilot token
COPILOT_VERSION = "0.35.0"
COPILOT_HEADERS: tuple[tuple[str, str], ...] = (
    ("editor-version", "vscode/1.107.0"),
    ("editor-plugin-version", f"copilot-chat/{COPILOT_VERSION}"),
    ("copilot-integration-id", "vscode-chat"),
    ("user-agent", f"GitHubCopilotChat/{COPILOT_VERSION}"),
    ("openai-intent", "conversation-panel"),
    ("x-github-api-version", "2025-04-01"),
)
COPILOT_API = "https://api.githubcopilot.com"


def copilot_body_headers(body: dict) -> dict[str, str]:
    """X-Initiator: `agent` once the conversation holds a model turn or a tool result (Copilot
    bills only user-initiated requests as premium), and the vision flag an image needs."""
    items = body.get("messages") if "messages" in body else body.get("input")
    items = items if isinstance(items, list) else []
    agent = any(isinstance(m, dict) and (
        m.get("role") in ("assistant", "tool")
        or m.get("type") in ("function_call", "function_call_output")) for m in items)
    out = {"x-initiator": "agent" if agent else "user"}
    if any(isinstance(m, dict) and isinstance(m.get("content"), list) and any(
            isinstance(p, dict) and p.get("type") in ("image_url", "input_image")
            for p in m["content"]) for m in items):
        out["copilot-vision-request"] = "true"
    return out


# Qwen Code logged in with Qwen OAuth (portal.qwen.ai): DashScope's compatible Chat, told
# which kind of credential it gets
QWEN_OAUTH_HEADERS: tuple[tuple[str, str], ...] = (
    ("user-agent", "QwenCode/0.15.10 (linux; x64)"),
    ("x-dashscope-useragent", "QwenCode/0.15.10 (linux; x64)"),
    ("x-dashscope-authtype", "qwen-oauth"),
    ("x-dashscope-cachecontrol", "enable"),
)


# Antigravity's Code Assist host (also daily-cloudcode-pa.sandbox.googleapis.com and
# cloudcode-pa.googleapis.com serve it) and the user agent its IDE sends
ANTIGRAVITY_API = "https://daily-cloudcode-pa.googleapis.com"
ANTIGRAVITY_USER_AGENT = "antigravity/1.15.8 linux/amd64"


PROVIDER_KINDS: dict[str, ProviderKind] = {k.name: k for k in (
    ProviderKind("openai", openai_chat, "/chat/completions", BEARER, dialects=True),
    ProviderKind("anthropic", anthropic, "/v1/messages", HeaderKey("x-api-key"),
                 fixed_headers=(("anthropic-version", "2023-06-01"),),
                 forwarded_headers=("anthropic-version", "anthropic-beta")),
    ProviderKind("openai-responses", openai_responses, "/responses", BEARER),
    # the ChatGPT backend Codex uses when logged in with ChatGPT (base_url
    # https://chatgpt.com/backend-api/codex): it only streams and never stores
    # (Codex's own headers go on with its own calls; others are sent as Codex's CLI)
    ProviderKind("codex", openai_responses, "/responses", ChatGPTToken(),
                 fixed_headers=(("originator", "codex_cli_rs"),),
                 forwarded_headers=("originator", "version", "session-id",
                                    "x-codex-beta-features", "x-codex-turn-metadata",
                                    "x-codex-window-id",
                                    "x-openai-internal-codex-responses-lite"),
                 required_fields=(("stream", True), ("store", False)),
                 refused_fields=("max_output_tokens",)),
    # base_url: https://generativelanguage.googleapis.com (the version is in the path)
    ProviderKind("gemini", gemini, "/v1beta/models/{model}:generateContent",
                 HeaderKey("x-goog-api-key"),
                 stream_path="/v1beta/models/{model}:streamGenerateContent?alt=sse",
                 count_path="/v1beta/models/{model}:countTokens"),
    # Ollama's native API (base_url http://127.0.0.1:11434, no api_keys for a local server;
    # Bearer for a hosted one, as Ollama's clients send OLLAMA_API_KEY)
    ProviderKind("ollama", ollama, "/api/chat", BEARER),
    # Code Assist with a Google login (base_url https://cloudcode-pa.googleapis.com), as
    # Gemini CLI logged in with Google speaks it: the Gemini body in the envelope naming the
    # account's project, the login's access token as Bearer, Gemini CLI's user agent
    ProviderKind("gemini-cli", gemini_code_assist, "/v1internal:generateContent", BEARER,
                 fixed_headers=(("user-agent", "GeminiCLI/0.61.0 (linux; x64)"),),
                 forwarded_headers=("user-agent",),
                 stream_path="/v1internal:streamGenerateContent?alt=sse",
                 account_project=True),
    # Code Assist as Antigravity (Google's IDE) calls it with an Antigravity login: the same
    # envelope and answers, Antigravity's own envelope fields, hosts and user agent
    ProviderKind("antigravity", gemini_code_assist, "/v1internal:generateContent", BEARER,
                 fixed_headers=(("user-agent", ANTIGRAVITY_USER_AGENT),),
                 stream_path="/v1internal:streamGenerateContent?alt=sse",
                 account_project=True, default_base_url=ANTIGRAVITY_API,
                 finish_body=antigravity.envelope),
    # GitHub Copilot with a Copilot login (`detour account login copilot`): Chat, and the
    # Responses API the codex models need; the login's short-lived Copilot token as Bearer
    ProviderKind("copilot", openai_chat, "/chat/completions", BEARER, dialects=True,
                 fixed_headers=COPILOT_HEADERS, default_base_url=COPILOT_API,
                 body_headers=copilot_body_headers),
    ProviderKind("copilot-responses", openai_responses, "/responses", BEARER,
                 fixed_headers=COPILOT_HEADERS, default_base_url=COPILOT_API,
                 body_headers=copilot_body_headers),
    # Qwen with a Qwen login (device flow): its access token as Bearer at the API its token
    # answer names (`resource_url`)
    ProviderKind("qwen", openai_chat, "/chat/completions", BEARER, dialects=True,
                 fixed_headers=QWEN_OAUTH_HEADERS, default_base_url="https://portal.qwen.ai/v1"),
    # iFlow with an iFlow login: the API key its user info hands out, as Bearer
    ProviderKind("iflow", openai_chat, "/chat/completions", BEARER, dialects=True,
                 fixed_headers=(("user-agent", "iFlow-Cli"),),
                 default_base_url="https://apis.iflow.cn/v1"),
)}

# a Chat provider's dialect from its base_url host (the host itself or a subdomain of it)
DIALECT_HOSTS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    ("openai.azure.com", "azure"),
    ("api.deepseek.com", "deepseek"),
    ("dashscope.aliyuncs.com", "dashscope"),
    ("dashscope-intl.aliyuncs.com", "dashscope"),
    ("openrouter.ai", "openrouter"),
    ("portal.qwen.ai", "dashscope"),  # Qwen OAuth: DashScope behind another host
)
# Azure OpenAI takes its API keys in `api-key` (Bearer is for Entra ID tokens)
DIALECT_CREDENTIALS: dict[str, Credential] = {"azure": HeaderKey("api-key")}


def provider_kind(name: str) -> ProviderKind:
    return PROVIDER_KINDS[name]


def known_kinds() -> str:
    return ", ".join(PROVIDER_KINDS)


@functools.lru_cache(maxsize=256)
def dialect_name(configured: str | None, base_url: str) -> str:
    """The configured dialect, else the one its host says, else plain compatible Chat."""
    if configured:
        return configured
    host = (urlsplit(base_url).hostname or "").lower()
    for suffix, name in DIALECT_HOSTS:
        if host == suffix or host.endswith("." + suffix):
            return name
    return openai_chat.COMPATIBLE.name


def credential_of(kind: ProviderKind, dialect: str | None) -> Credential:
    return DIALECT_CREDENTIALS.get(dialect, kind.credential) if dialect else kind.credential
