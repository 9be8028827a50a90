"""detour's configuration: `config.yaml` in DETOUR_HOME, validated by pydantic.

Unknown keys are errors (a typo must not silently change routing), and every error names the
path of the bad field. Secrets may be written literally, as `env:NAME` or as `file:PATH`; they
are resolved once, at load, so a missing variable fails at start and never mid-flow.
"""

import fnmatch
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from addons import formats
from translators.openai_chat import DIALECTS

DEFAULT_HOME = "~/.detour"
CONFIG_NAME = "config.yaml"

# a provider's `proxy:`: these URL schemes, or DIRECT (not even mitmproxy's upstream proxy)
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
DIRECT = "direct"
PASSTHROUGH = "passthrough"
# how a provider's ready accounts of one priority group take turns
ROUND_ROBIN = "round-robin"
LEAST_RECENTLY_USED = "least-recently-used"

DEFAULT_CONFIG_YAML = """\
# detour configuration. Reloaded on change; a bad edit is reported and the previous
# configuration stays in force. Full reference: README.md, section "Configuration".

# Providers answer model calls. `kind` is the wire format the provider speaks:
#   openai    - any OpenAI-compatible Chat Completions endpoint (OpenAI, DeepSeek, OpenRouter,
#               Qwen/DashScope, a local vLLM or Ollama /v1 ...)
#   anthropic - the Anthropic Messages API
#   openai-responses - OpenAI's Responses API (base_url .../v1; requests go to /responses)
#   codex     - the ChatGPT backend Codex uses when logged in with ChatGPT (base_url
#               https://chatgpt.com/backend-api/codex; api_keys: the login's access token)
#   gemini    - the Gemini API, API key (base_url https://generativelanguage.googleapis.com)
#   copilot, copilot-responses - GitHub Copilot (Chat; Responses for the codex models),
#               served by `detour account login copilot` logins (base_url: the login's own)
#   qwen      - Qwen with `detour account login qwen` (base_url: the login's resource_url)
#   iflow     - iFlow with `detour account login iflow` (https://apis.iflow.cn/v1)
# api_keys are the provider's accounts: a literal key, env:VARIABLE or file:/path/to/key, or
# {key: ..., priority: 2, disabled: true}. Lower priority groups are asked first; inside a
# group accounts take turns (strategy: round-robin | least-recently-used). An account that
# fails (429, 5xx, 401/403, timeout, exhausted quota) rests and the next account, then the
# next candidate of the route, is tried.
providers: {}
#  deepseek:
#    kind: openai
#    base_url: https://api.deepseek.com/v1
#    api_keys: [env:DEEPSEEK_API_KEY]
#    max_output_tokens: 8192        # cap max_tokens for providers with a lower limit
#    reasoning_effort: drop         # drop | pass | minimal | low | medium | high

# Routes: requested model -> candidates, tried in order. A candidate is `provider/model`,
# `provider/*` (the requested model name, unchanged) or `passthrough` (the original vendor,
# untouched, with the client's own credentials). Keys may be glob patterns; an exact name wins,
# then patterns in the order written, then "*".
routes:
  "*": [passthrough]       # observe mode: forward everything untouched, record usage
#  claude-*: [deepseek/deepseek-chat, passthrough]

# Combos: a model name of your own that clients can request, with its candidates.
combos: {}
#  coding: [deepseek/deepseek-reasoner, passthrough]

# Clients: routes of one client tool, told by its User-Agent (globs), before the routes above.
clients: {}
#  claude-code:
#    match: "claude-cli/*"
#    routes:
#      claude-haiku-*: [deepseek/deepseek-chat]   # its small background model, cheaper

# Prices in USD per million tokens, for the cost column of `detour usage`. Known models
# are priced already (the genai-prices package's table); an entry here overrides a model's
# price, or prices one the table lacks (else its cost stays unknown, never 0).
prices: {}
#  deepseek-chat: {input: 0.27, output: 1.10, cache_read: 0.07}

# Hosts whose OpenAI-compatible /v1/chat/completions (DashScope: /compatible-mode/v1/...)
# clients call directly, taken as OpenAI Chat calls. Default: Qwen Code's own hosts.
# chat_hosts: [dashscope.aliyuncs.com, dashscope-intl.aliyuncs.com, portal.qwen.ai]
"""


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file and the bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect: Annotated[float, Field(gt=0)] = 10.0
    # streamed calls: until the provider's status line and headers arrive (a fallback is
    # still possible then)
    first_byte: Annotated[float, Field(gt=0)] = 120.0
    # between two reads of a body once it flows
    read: Annotated[float, Field(gt=0)] = 300.0
    # whole (non-streamed) calls: the whole answer, headers included (a provider sends them
    # only once the generation is done), as the vendors' SDKs allow by default
    total: Annotated[float, Field(gt=0)] = 600.0


MIB = 1 << 20


class Limits(_Strict):
    """What a peer may make detour hold; past each, the call is refused (413) or the attempt
    fails, in the client's format. The defaults fit the largest real requests (Claude Code
    sends 20-30 MB with several images)."""

    # a client's request body as sent
    request_body: Annotated[int, Field(gt=0)] = 64 * MIB
    # a compressed body (a client's request, a provider's answer) once decoded
    decompressed: Annotated[int, Field(gt=0)] = 256 * MIB
    # a provider's whole (non-streamed) answer, decoded
    answer_body: Annotated[int, Field(gt=0)] = 64 * MIB
    # seconds a streamed answer may run from its request on, whatever it sends
    stream_seconds: Annotated[float, Field(gt=0)] = 1800.0


class ApiKey(_Strict):
    """One account of a provider written as a mapping: `{key: env:A, priority: 2}`."""

    key: str = Field(repr=False)  # a literal secret, env:NAME or file:PATH
    # its group: every ready account of group 1 is asked before any of group 2
    priority: Annotated[int, Field(ge=0)] = 1
    disabled: bool = False  # kept in the configuration, never asked

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")  # never repeats the value: it may be a secret
        return v


class Provider(_Strict):
    kind: str  # a provider kind of the format table (addons/formats.py)
    base_url: str
    # the provider's accounts: a key (literal, env:NAME, file:PATH; priority 1) or an ApiKey
    # mapping; may hold literal secrets
    api_keys: list[str | ApiKey] = Field(default_factory=list, repr=False)
    # how ready accounts of one priority group take turns: round-robin (one step per call)
    # or least-recently-used
    strategy: Literal["round-robin", "least-recently-used"] = ROUND_ROBIN
    # where the vendor counts its rate limits: per model (a 429 on one model leaves the
    # account's other models serving) or per account (a 429 rests the whole account)
    rate_limits: Literal["per-model", "per-account"] = "per-model"
    headers: dict[str, str] = Field(default_factory=dict)
    max_output_tokens: Annotated[int, Field(gt=0)] | None = None
    # What to do with the client's reasoning effort (Claude Code always asks "high") when the
    # call is translated: models without reasoning refuse the field, so it is dropped unless
    # you say "pass" or name the effort to send.
    reasoning_effort: Literal["drop", "pass", "minimal", "low", "medium", "high"] = "drop"
    # kind openai only: the vendor's flavour of Chat (translators/openai_chat.DIALECTS); unset,
    # it follows base_url's host (api.deepseek.com: deepseek, ...), else plain compatible Chat
    dialect: str | None = None
    # kind openai only, overriding the dialect's own: OpenAI's reasoning models refuse
    # max_tokens and want max_completion_tokens; content_parts sends content as part arrays
    # that keep cache_control markers (as Qwen Code does with DashScope) instead of strings
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    content_parts: bool | None = None
    timeouts: Timeouts = Timeouts()
    # How the provider is reached: an outbound proxy URL (its credentials are secrets: never
    # shown), or `direct`; unset means mitmproxy's own upstream proxy when it runs in
    # `--mode upstream:URL`, else direct
    proxy: str | None = Field(None, repr=False)
    # TLS trust: `verify: false` checks nothing; `ca_file` trusts the CAs in that PEM file
    # instead of the default store (a provider behind a private CA)
    verify: bool = True
    ca_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _verify_tls_alias(cls, data):
        # `verify_tls` was this setting's first name: still accepted, read as `verify`
        if isinstance(data, dict) and "verify_tls" in data:
            if "verify" in data:
                raise ValueError("verify_tls: replaced by verify; keep only verify")
            data = dict(data)
            data["verify"] = data.pop("verify_tls")
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_base_url(cls, data):
        # a subscription's kind knows its API (copilot, qwen, iflow): base_url may be left out
        if isinstance(data, dict) and "base_url" not in data:
            kind = formats.PROVIDER_KINDS.get(data.get("kind"))
            if kind is not None and kind.default_base_url:
                data = dict(data, base_url=kind.default_base_url)
        return data

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys(cls, v):
        # a mapping that is not an ApiKey is named by its own fault, not pydantic's union
        # of both shapes' complaints
        if isinstance(v, list):
            for i, entry in enumerate(v):
                if not isinstance(entry, (str, dict)):
                    raise ValueError(f"[{i}]: a key (string) or a mapping with key:, "
                                     f"priority:, disabled:, not {type(entry).__name__}")
                if isinstance(entry, dict):
                    try:
                        ApiKey.model_validate(entry)
                    except ValidationError as e:
                        raise ValueError("; ".join(f"[{i}].{_problem(p)}" for p in e.errors())
                                         ) from None
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in formats.PROVIDER_KINDS:
            raise ValueError(f"unknown kind {v!r} (known: {formats.known_kinds()})")
        return v

    @field_validator("dialect")
    @classmethod
    def _dialect(cls, v: str | None) -> str | None:
        if v is not None and v not in DIALECTS:
            raise ValueError(f"unknown dialect {v!r} (known: {', '.join(DIALECTS)})")
        return v

    @model_validator(mode="after")
    def _dialect_kind(self):
        if not formats.PROVIDER_KINDS[self.kind].dialects:
            for name in ("dialect", "max_tokens_field", "content_parts"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: only for kind openai, not {self.kind}")
        return self

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        # the message never repeats the value: it may hold a password
        if v is None or v == DIRECT:
            return v
        scheme, sep, rest = v.partition("://")
        if not sep or scheme not in PROXY_SCHEMES or not rest.strip("/"):
            raise ValueError(f"must be {DIRECT} or a URL starting with "
                             + ", ".join(f"{s}://" for s in PROXY_SCHEMES))
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: str | None) -> str | None:
        if v is None:
            return v
        path = Path(v).expanduser()
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        return str(path.resolve())


class Price(_Strict):
    input: float = 0.0
    output: float = 0.0
    cache_read: float | None = None
    cache_write: float | None = None


class ClientRoutes(_Strict):
    """Routes of one client tool, told by its User-Agent: they come before the global ones."""

    # User-Agent globs (`claude-cli/*`, `codex_cli_rs/*`, `OpenAI/Python *`); one or a list
    match: list[str]
    routes: dict[str, list[str]]

    @field_validator("match", mode="before")
    @classmethod
    def _one_or_more(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("match")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        if not v or not all(p.strip() for p in v):
            raise ValueError("needs one or more User-Agent patterns (e.g. \"claude-cli/*\")")
        return v

    @field_validator("routes")
    @classmethod
    def _some_routes(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        if not v:
            raise ValueError("needs at least one route")
        return v

    def matches(self, user_agent: str) -> bool:
        return any(fnmatch.fnmatchcase(user_agent, p) for p in self.match)


def lookup(routes: dict[str, list[str]], model: str) -> tuple[str, list[str]] | None:
    """The route of `model` in one routes table: its exact name, then the first glob that
    matches in the order written, then "*"; (the key that matched, its candidates)."""
    if model in routes:
        return model, routes[model]
    for pattern, cands in routes.items():
        if pattern != "*" and fnmatch.fnmatchcase(model, pattern):
            return pattern, cands
    if "*" in routes:
        return "*", routes["*"]
    return None


class Config(_Strict):
    providers: dict[str, Provider] = Field(default_factory=dict)
    routes: dict[str, list[str]] = Field(default_factory=lambda: {"*": [PASSTHROUGH]})
    combos: dict[str, list[str]] = Field(default_factory=dict)
    # client tools (by User-Agent) with routes of their own, first match in the order written
    clients: dict[str, ClientRoutes] = Field(default_factory=dict)
    vendors: dict[str, str] = Field(default_factory=dict)
    # hosts whose /v1/chat/completions (DashScope: /compatible-mode/v1/...) is intercepted as
    # OpenAI Chat (Qwen Code's own hosts by default)
    chat_hosts: list[str] = Field(default_factory=lambda: list(formats.DEFAULT_CHAT_HOSTS))
    prices: dict[str, Price] = Field(default_factory=dict)
    # how long an account rests after a 429 without Retry-After; the cap of the backoff after
    # 5xx, timeouts and refused connections (1 s, then doubling while they keep failing)
    cooldown_seconds: Annotated[float, Field(ge=0)] = 30.0
    limits: Limits = Limits()
    # a gateway (users configured, or remote clients allowed) proxies the vendors' hosts only,
    # and these (globs, e.g. "*.github.com"): it is not an open proxy
    allow_hosts: list[str] = Field(default_factory=list)
    # where several detour processes share cooldowns, round-robin turns and users' limit
    # counters: redis://[:password@]host:port[/db] (rediss:// with TLS); unset: in-process
    state: str | None = Field(default=None, repr=False)
    # where every process's usage rows go: postgresql://user:password@host:port/db (read at
    # start); unset: DETOUR_HOME/detour.db (SQLite)
    database: str | None = Field(default=None, repr=False)

    @field_validator("state")
    @classmethod
    def _state_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")  # never repeats it
        return v

    @field_validator("database")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("vendors")
    @classmethod
    def _vendor_urls(cls, v: dict[str, str]) -> dict[str, str]:
        for host, url in v.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"vendors.{host}: {url!r} must start with http:// or https://")
        return {host: url.rstrip("/") for host, url in v.items()}

    @model_validator(mode="after")
    def _candidates_exist(self):
        tables = [("routes", self.routes), ("combos", self.combos)] + [
            (f"clients.{client}.routes", spec.routes) for client, spec in self.clients.items()]
        for section, table in tables:
            for name, cands in table.items():
                if not cands:
                    raise ValueError(f"{section}.{name}: needs at least one candidate")
                for i, cand in enumerate(cands):
                    if cand == PASSTHROUGH:
                        continue
                    provider, sep, model = cand.partition("/")
                    if not sep and cand in self.combos:
                        raise ValueError(
                            f"{section}.{name}[{i}]: {cand!r} is a combo, and combos do not "
                            "nest: a candidate is provider/model or passthrough. Write the "
                            f"combo's candidates here ({', '.join(self.combos[cand])}), or "
                            f"have clients ask for model {cand!r}"
                        )
                    if not sep or not model:
                        raise ValueError(
                            f"{section}.{name}[{i}]: {cand!r} is not provider/model or passthrough"
                        )
                    if provider not in self.providers:
                        raise ValueError(
                            f"{section}.{name}[{i}]: unknown provider {provider!r}"
                            f" (configured: {', '.join(self.providers) or 'none'})"
                        )
        return self

    @property
    def format_table(self) -> "formats.FormatTable":
        """The endpoints detour takes: the vendors' and those of `chat_hosts`."""
        return formats.with_chat_hosts(tuple(self.chat_hosts))

    def vendor_origin(self, host: str) -> str:
        return self.vendors.get(host) or formats.VENDOR_ORIGINS.get(host) or f"https://{host}"

    def client_of(self, user_agent: str) -> str | None:
        """The first configured client whose `match` fits this User-Agent."""
        if user_agent:
            for name, spec in self.clients.items():
                if spec.matches(user_agent):
                    return name
        return None

    def route(self, model: str, user_agent: str = "") -> tuple[str, list[str]]:
        """Where a requested model's candidates come from (the config path of the entry) and
        the candidates: the client's own routes (exact, globs, "*") when its User-Agent matches
        a configured client, then a combo, then the global routes, then passthrough."""
        client = self.client_of(user_agent)
        if client is not None:
            found = lookup(self.clients[client].routes, model)
            if found is not None:
                return f"clients.{client}.routes.{found[0]}", found[1]
        if model in self.combos:
            return f"combos.{model}", self.combos[model]
        found = lookup(self.routes, model)
        if found is not None:
            return f"routes.{found[0]}", found[1]
        return "default", [PASSTHROUGH]

    def candidates(self, model: str, user_agent: str = "") -> list[str]:
        """The candidate list for a requested model (see `route`)."""
        return self.route(model, user_agent)[1]


def resolve_secret(value: str, where: str) -> str:
    """`env:NAME` / `file:PATH` / literal -> the secret itself."""
    if value.startswith("env:"):
        name = value[4:]
        secret = os.environ.get(name)
        if not secret:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return secret
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        try:
            secret = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None
        if not secret:
            raise ConfigError(f"{where}: {path} is empty")
        return secret
    return value


def resolve_api_key(entry: str | ApiKey, where: str) -> str:
    """One api_keys entry (a string or an ApiKey mapping) -> its secret. A disabled key whose
    `env:`/`file:` reference does not resolve gives "": it is never asked, so a variable or key
    file that is gone must not stop the proxy (nor fail `detour config check`)."""
    if isinstance(entry, str):
        return resolve_secret(entry, where)
    try:
        return resolve_secret(entry.key, f"{where}.key")
    except ConfigError:
        if entry.disabled:
            return ""
        raise


def _problem(e) -> str:
    """One pydantic error as `path: what` (an unknown key said so, no pydantic prefix)."""
    path = ".".join(str(p) for p in e["loc"])
    msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
    msg = msg.removeprefix("Value error, ")
    return f"{path}: {msg}" if path else msg


def _format_validation_error(err: ValidationError) -> str:
    return "; ".join(_problem(e) for e in err.errors())


def parse_config(text: str, source: str = CONFIG_NAME) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format_validation_error(e)}") from None


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    return parse_config(text, str(path))


def home_dir(value: str | None = None) -> Path:
    return Path(value or os.environ.get("DETOUR_HOME") or DEFAULT_HOME).expanduser().resolve()


def is_loopback(host: str) -> bool:
    """A listen address only this machine reaches (the proxy has no authentication)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "" is every interface; another name may resolve to anything


def ensure_home(home: Path) -> Path:
    """Create DETOUR_HOME (0700) and a commented default config.yaml if there is none.
    Returns the config path."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg = home / CONFIG_NAME
    if not cfg.exists():
        # O_EXCL: two processes starting at once must not truncate each other's file
        try:
            fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cfg
        with os.fdopen(fd, "w") as f:
            f.write(DEFAULT_CONFIG_YAML)
    return cfg


def config_warnings(config: Config) -> list[str]:
    """What is valid but probably not meant: providers no route uses (every call then goes to
    its original vendor), a provider without keys or with every key disabled."""
    tables = [config.routes, config.combos] + [c.routes for c in config.clients.values()]
    used = {cand.partition("/")[0] for table in tables for cands in table.values()
            for cand in cands if cand != PASSTHROUGH}
    out = []
    if config.providers and not used:
        out.append("providers are configured but no route, combo or client route uses one: "
                   "every call goes to its original vendor (observe mode). Route models to "
                   f"them, e.g. routes: {{\"*\": [{next(iter(config.providers))}/MODEL]}}")
    for name, provider in config.providers.items():
        if used and name not in used:
            out.append(f"providers.{name}: no route, combo or client route uses it")
        if not provider.api_keys:
            out.append(f"providers.{name}: no api_keys: calls go to it without a credential "
                       "(right for a local server; a hosted API answers 401)")
        elif all(not isinstance(k, str) and k.disabled for k in provider.api_keys):
            out.append(f"providers.{name}: every key is disabled: its routes skip it")
    return out
