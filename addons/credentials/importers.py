"""The logins the vendors' CLIs already hold on this machine, read from their own files:

- Claude Code: `$CLAUDE_CONFIG_DIR/.credentials.json` (default `~/.claude`), key
  `claudeAiOauth`: accessToken, refreshToken, expiresAt (ms), subscriptionType;
- Codex: `$CODEX_HOME/auth.json` (default `~/.codex`), `tokens`: id_token, access_token,
  refresh_token, account_id (the access token's `exp` is its expiry);
- Gemini CLI: `~/.gemini/oauth_creds.json`: access_token, refresh_token, id_token,
  expiry_date (ms);
- Qwen Code: `~/.qwen/oauth_creds.json`: access_token, refresh_token, resource_url,
  expiry_date (ms).

Reading only: the files are left as they are. Once imported, detour is the login's refresher
(its refresh token rotates: two refreshers would revoke each other), and while the CLI runs
through the proxy its own refresh calls are answered from detour's store (owner.py).
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from addons.credentials.oauth import jwt_claims


@dataclass
class Found:
    vendor: str
    path: Path
    secrets: dict = field(repr=False)
    expires_at: float | None
    meta: dict


def _ms(value) -> float | None:
    return float(value) / 1000 if isinstance(value, (int, float)) else None


def _claude(home: Path, env) -> Found | None:
    path = Path(env.get("CLAUDE_CONFIG_DIR") or home / ".claude") / ".credentials.json"
    data = _read(path)
    o = (data or {}).get("claudeAiOauth")
    if not isinstance(o, dict) or not o.get("refreshToken"):
        return None
    return Found("claude", path, {"access_token": o.get("accessToken", ""),
                                  "refresh_token": o["refreshToken"]},
                 _ms(o.get("expiresAt")), {"plan": o.get("subscriptionType")})


def _codex(home: Path, env) -> Found | None:
    path = Path(env.get("CODEX_HOME") or home / ".codex") / "auth.json"
    data = _read(path)
    t = (data or {}).get("tokens")
    if not isinstance(t, dict) or not t.get("refresh_token"):
        return None
    claims = jwt_claims(t.get("id_token"))
    auth = claims.get("https://api.openai.com/auth") or {}
    exp = jwt_claims(t.get("access_token")).get("exp")
    secrets = {k: t[k] for k in ("access_token", "refresh_token", "id_token") if t.get(k)}
    return Found("codex", path, secrets, float(exp) if isinstance(exp, (int, float)) else None,
                 {"email": claims.get("email"), "plan": auth.get("chatgpt_plan_type"),
                  "account_id": t.get("account_id") or auth.get("chatgpt_account_id")})


def _google_style(vendor: str, path: Path) -> Found | None:
    data = _read(path)
    if not isinstance(data, dict) or not data.get("refresh_token"):
        return None
    secrets = {k: data[k] for k in ("access_token", "refresh_token", "id_token")
               if data.get(k)}
    return Found(vendor, path, secrets, _ms(data.get("expiry_date")),
                 {"email": jwt_claims(data.get("id_token")).get("email"),
                  "project_id": data.get("resource_url")})


def _gemini(home: Path, env) -> Found | None:
    return _google_style("gemini", home / ".gemini" / "oauth_creds.json")


def _qwen(home: Path, env) -> Found | None:
    return _google_style("qwen", home / ".qwen" / "oauth_creds.json")


READERS = {"claude": _claude, "codex": _codex, "gemini": _gemini, "qwen": _qwen}


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find(vendors=None, home: Path | None = None, env=None) -> list[Found]:
    """The logins found for these vendors (default: all the readers know)."""
    home = home or Path.home()
    env = os.environ if env is None else env
    out = []
    for name in vendors or READERS:
        found = READERS[name](home, env)
        if found is not None:
            found.meta = {k: v for k, v in found.meta.items() if v}
            out.append(found)
    return out
