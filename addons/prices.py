"""What a call cost: the configuration's `prices:` first (per model, USD per million tokens),
else the default price of a known model from the `genai-prices` package (Pydantic's
maintained price data, bundled with the package: nothing is fetched at run time), else
unknown: NULL, never 0.

Token accounting is Anthropic's, as the usage row keeps it: `input_tokens` excludes the cached
ones, so a cache read and a cache write are priced at their own rates, and genai-prices (which
counts input OpenAI's way, cached tokens included) is given their sum. A subscription login (a
Claude or ChatGPT OAuth token rather than an API key) pays no per-token price; its calls get
the API price they would have cost, marked `cost_basis = "subscription"`.
"""

import functools
import logging
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from addons.config import Price
from translators import canonical

log = logging.getLogger(__name__)

CONFIG = "config"
GENAI_PRICES = "genai-prices"
API = "api"
SUBSCRIPTION = "subscription"
# bearer tokens of subscription logins, never API keys: Anthropic's OAuth access tokens,
# OpenAI's ChatGPT login (a JWT), Google's OAuth access tokens
SUBSCRIPTION_TOKEN_PREFIXES = ("sk-ant-oat", "eyJ", "ya29.")
_import_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Cost:
    usd: float | None  # None: no price known for the model
    source: str | None  # CONFIG or GENAI_PRICES; None with no price


UNKNOWN = Cost(None, None)


def cost_of(prices: dict[str, Price], model: str, usage: canonical.Usage,
            provider_url: str = "") -> Cost:
    """The cost of `usage` on `model`: the configured price of that model name, else its
    default price (looked up by the provider's URL, then by the model name alone), else
    UNKNOWN."""
    price = prices.get(model)
    if price is not None:
        return Cost(configured_cost(price, usage), CONFIG)
    if not model:
        return UNKNOWN
    usd = default_cost(model, _origin(provider_url), usage)
    return UNKNOWN if usd is None else Cost(usd, GENAI_PRICES)


def price_rows(records: list[dict]) -> None:
    """Price the usage records (as the store writes them) whose call had no configured price
    (`price_url` set: see Call.price_later), in place: the default price, or no cost at all.
    Runs in the store's writer thread."""
    for rec in records:
        url = rec.pop("price_url", None)
        if url is None or rec.get("cost_usd") is not None:
            continue
        try:
            usd = default_cost(rec.get("model_upstream") or "", _origin(url), canonical.Usage(
                input_tokens=rec.get("input_tokens") or 0,
                output_tokens=rec.get("output_tokens") or 0,
                cache_read_tokens=rec.get("cache_read_tokens") or 0,
                cache_write_tokens=rec.get("cache_write_tokens") or 0))
        except Exception as e:  # noqa: BLE001 - a price is never worth a row
            log.error("detour: pricing %s failed: %s", rec.get("model_upstream"), e)
            usd = None
        if usd is None:
            rec["cost_basis"] = None
        else:
            rec["cost_usd"], rec["price_source"] = usd, GENAI_PRICES


def configured_cost(price: Price, usage: canonical.Usage) -> float:
    cache_read = price.cache_read if price.cache_read is not None else price.input
    cache_write = price.cache_write if price.cache_write is not None else price.input
    return round((usage.input_tokens * price.input + usage.output_tokens * price.output
                  + usage.cache_read_tokens * cache_read
                  + usage.cache_write_tokens * cache_write) / 1e6, 8)


def default_cost(model: str, provider_origin: str, usage: canonical.Usage) -> float | None:
    """genai-prices' price of this call, None when it knows no such model."""
    if not model:
        return None
    provider_id = _provider_of(model, provider_origin)
    if provider_id is None:
        return None
    genai = _genai()
    try:
        calc = genai.calc_price(genai.Usage(
            input_tokens=usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens), model, provider_id=provider_id)
    except (LookupError, ValueError) as e:  # a model with no price for this kind of usage
        log.debug("detour: no default price for %s: %s", model, e)
        return None
    return round(float(calc.total_price), 8)


@functools.lru_cache(maxsize=1024)
def _provider_of(model: str, provider_origin: str) -> str | None:
    """The genai-prices provider that prices `model` reached at `provider_origin`: the one
    serving that URL (OpenRouter's own prices for OpenRouter), else the model's own vendor
    (a local server or a gateway with an unknown URL gets the vendor's API price); None for an
    unknown model. Cached: a lookup scans the whole table (~1 ms), a price after it ~0.2 ms."""
    genai = _genai()
    probe = genai.Usage(input_tokens=1, output_tokens=1)
    if provider_origin:
        try:
            return genai.calc_price(probe, model, provider_api_url=provider_origin).provider.id
        except LookupError:
            pass
    try:
        return genai.calc_price(probe, model).provider.id
    except LookupError:
        return None


def _genai():
    # imported on the first price needed (~0.5 s of CPU: the price table is a large module)
    with _import_lock:
        import genai_prices
    return genai_prices


_warming: threading.Thread | None = None


def warm_up() -> None:
    """Load the price table in a background thread now, once: a call that will need a
    default price has started, and the writer (or a clean stop) should not wait for it."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_provider_of, args=("gpt-4o", ""),
                                    name="detour prices load", daemon=True)
        _warming.start()


def _origin(url: str) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def subscription_login(headers) -> bool:
    """The client authenticates with a subscription login (an OAuth bearer token), not an API
    key. `headers`: a mapping with lower-case names."""
    auth = headers.get("authorization") or ""
    scheme, _, token = auth.strip().partition(" ")
    return scheme.lower() == "bearer" and token.strip().startswith(SUBSCRIPTION_TOKEN_PREFIXES)
