"""The operator's view of accounts and routes, as mitmproxy commands returning JSON (mitmweb's
command bar, its REST API `POST /commands/detour.accounts`, `detour status`):

- `detour.accounts`: every account of every provider (and each client key a passthrough call
  rested or saw rate limits for): its state (ready, resting, needs_login: a stored login whose
  refresh was refused, or disabled), why it is not ready and until when it rests, its last few
  errors, and what its vendor last said of its rate limits.
- `detour.routes`: what each configured route (global, combo, per client) resolves to now:
  its candidates in the order they would be asked, each with its account's state.

Labels are shown (the operator wrote them: `env:NAME`, `file:PATH`, a short hash), never a key.
"""

import json
import time

from mitmproxy import command

from addons.config import PASSTHROUGH
from addons.quota import iso
from addons.routing import NO_KEY, Account, Candidate, expand
from addons.settings import DetourSettings

READY = "ready"
RESTING = "resting"
NEEDS_LOGIN = "needs_login"  # never asked until `detour account login` renews it
DISABLED = "disabled"  # config.yaml's `disabled: true`, or `detour account disable`


class OperatorCommands:
    def __init__(self, settings: DetourSettings):
        self.settings = settings

    @command.command("detour.accounts")
    def accounts(self) -> str:
        """Every account as JSON: provider, label, state (ready/resting/needs_login/disabled),
        why it is not ready, rest until, recent errors, rate limits as last seen."""
        rt = self.settings.runtime
        out, shown = [], set()
        for name, provider in rt.providers.items():
            for account in provider.accounts or (NO_KEY,):
                cand = Candidate(provider, account, "")
                shown.add(cand.key)
                out.append({"provider": name, "account": account.name,
                            "label": account.label, **self._state(cand.key, account=account)})
        # passthrough calls rest, and learn rate limits, per client key (by fingerprint)
        forwarder = rt.forwarder
        others = set(rt.cooldowns.resting()) | set(forwarder.recent_errors.keys())
        for key in sorted(k for k in others if k not in shown and k.startswith(PASSTHROUGH)):
            out.append({"provider": PASSTHROUGH, "account": "client", "label": key,
                        **self._state(key)})
        return json.dumps({"accounts": out})

    @command.command("detour.routes")
    def routes(self) -> str:
        """Every configured route as JSON (per-client routes first, then combos, then the global
        routes): where it is configured, and its candidates in the order they are asked now,
        each with its state."""
        rt = self.settings.runtime
        config = rt.config
        tables = [(client, spec.match, f"clients.{client}.routes", spec.routes)
                  for client, spec in config.clients.items()]
        tables += [(None, None, "combos", config.combos), (None, None, "routes", config.routes)]
        out = []
        for client, match, section, table in tables:
            for model, entries in table.items():
                # as the next call would be routed; looking takes no round-robin turn
                cands = expand(entries, rt.providers, model, rt.forwarder.quotas, rt.cooldowns,
                               take_turn=False)
                out.append({"client": client, "match": match, "model": model,
                            "configured": f"{section}.{model}",
                            "candidates": [self._candidate(c) for c in cands]})
        return json.dumps({"routes": out})

    def _candidate(self, cand: Candidate) -> dict:
        if cand.provider is None:
            return {"provider": PASSTHROUGH, "model": cand.model, "state": READY}
        state = self._state(cand.key, cand.model, cand.account)
        return {"provider": cand.provider_name, "account": cand.account.name,
                "label": cand.account_label, "model": cand.model, "state": state["state"],
                "why": state["why"], "rest": state["rest"]}

    def _state(self, key: str, model: str | None = None, account: Account | None = None
               ) -> dict:
        """An account's state: disabled, needs_login (a stored login that must be renewed:
        routing puts it last and the forwarder never sends it), else resting when it rests as
        a whole or, given `model`, for that model (without one: for any model), else ready;
        `why` says why it is not ready; `rest` is the longest rest that applies, the account's
        own rest is `account_rest` and its rests for single models `model_rests`."""
        rt = self.settings.runtime
        now = time.monotonic()
        rests = rt.cooldowns.rests_of(key, now)
        applying = [r for m, r in rests.items() if m is None or model is None or m == model]
        rest = max(applying, key=lambda r: r.until, default=None)
        state, why = (RESTING, f"{rest.reason.value}: {rest.cause}") if rest else (READY, None)
        if account is not None and account.disabled:
            state, why = DISABLED, ("disabled: `detour account enable` takes it back"
                                    if account.stored_id is not None
                                    else "disabled in config.yaml")
        elif account is not None:
            creds = rt.forwarder.credentials
            login = creds.unusable(account) if creds is not None else None
            if login is None and account.needs_login:
                login = "needs login: run `detour account login`"
            if login is not None:
                state, why = NEEDS_LOGIN, login
        return {"state": state, "why": why, "rest": _described(rest, now),
                "account_rest": _described(rests.get(None), now),
                "model_rests": {m: _described(r, now) for m, r in rests.items() if m},
                "recent_errors": rt.forwarder.recent_errors.of(key),
                "rate_limits": rt.forwarder.quotas.describe(key)}


def _described(rest, now: float) -> dict | None:
    if rest is None:
        return None
    left = max(0.0, rest.until - now)
    return {"until": iso(time.time() + left), "seconds_left": round(left, 1),
            "reason": rest.reason.value, "cause": rest.cause}
