"""Each subscription login's public OAuth client, as the vendor's own CLI has it.

The constants are those the vendors' CLIs ship (public clients: their ids, and Google's
installed-app "secret", are not secrets). Every URL can be overridden by environment, for a
gateway or a test: `DETOUR_OAUTH_<VENDOR>_<FIELD>`, e.g. `DETOUR_OAUTH_CLAUDE_TOKEN_URL` or
`DETOUR_OAUTH_QWEN_DEVICE_URL` (FIELD: AUTHORIZE_URL, TOKEN_URL, DEVICE_URL, API_KEY_URL,
CODE_ASSIST_URL, CALLBACK_PORT).

`flow`: `pkce` (authorization code + PKCE with a local callback), `device` (device
authorization grant; Qwen's with PKCE too; Copilot's then exchanges the GitHub token for a
short-lived Copilot token) or `iflow` (iFlow's authorization code: its own authorize
parameters, the client secret instead of PKCE, then the API key from its user info).
`token_body`: how the token endpoint wants its parameters (Anthropic and OpenAI take JSON on
refresh, the others a form). `kinds`: the provider kinds whose requests this login's token can
carry.
"""

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Vendor:
    name: str
    title: str
    flow: str  # pkce | device | iflow
    client_id: str
    token_url: str
    kinds: tuple[str, ...]
    scopes: tuple[str, ...] = ()
    authorize_url: str = ""
    device_url: str = ""
    client_secret: str = ""  # Google's installed-app clients have one (public by design)
    callback_port: int = 0  # 0: any free port
    callback_path: str = "/callback"
    callback_host: str = "localhost"
    extra_authorize: tuple[tuple[str, str], ...] = ()
    token_body: str = "form"  # form | json (code exchange and refresh)
    refresh_json: bool = False  # refresh as JSON even when the code exchange is a form
    refresh_scope: str = ""  # a scope the refresh request names
    device_pkce: bool = False
    # Copilot: where the GitHub token buys the Copilot token; iFlow: the user info that
    # hands out the API key for an access token
    api_key_url: str = ""
    basic_auth: bool = False  # the token endpoint wants the client as HTTP Basic too
    # Google logins: Code Assist, where the account's project is found (or onboarded)
    code_assist_url: str = ""
    # the CLI's own refresh endpoints that detour answers for a login it holds (owner.py)
    refresh_hosts: tuple[tuple[str, str], ...] = ()

    def setting(self, field: str) -> str:
        env = f"DETOUR_OAUTH_{self.name.upper()}_{field.upper()}"
        value = os.environ.get(env)
        return value if value else str(getattr(self, field))

    def url(self, field: str) -> str:
        return self.setting(field)

    @property
    def port(self) -> int:
        return int(self.setting("callback_port"))


VENDORS: dict[str, Vendor] = {v.name: v for v in (
    # Claude Code: claude.ai login (Pro/Max), its local callback on any free port
    Vendor("claude", "Claude (Pro/Max)", "pkce", "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
           "https://platform.claude.com/v1/oauth/token", ("anthropic",),
           scopes=("org:create_api_key", "user:profile", "user:inference",
                   "user:sessions:claude_code", "user:mcp_servers", "user:file_upload"),
           authorize_url="https://claude.com/cai/oauth/authorize",
           extra_authorize=(("code", "true"),), token_body="json",
           refresh_hosts=(("platform.claude.com", "/v1/oauth/token"),
                          ("console.anthropic.com", "/v1/oauth/token"))),
    # Codex CLI: ChatGPT login on Codex's own callback port
    Vendor("codex", "OpenAI Codex (ChatGPT)", "pkce", "app_EMoamEEZ73f0CkXaXp7hrann",
           "https://auth.openai.com/oauth/token", ("codex",),
           scopes=("openid", "profile", "email", "offline_access"),
           authorize_url="https://auth.openai.com/oauth/authorize", callback_port=1455,
           callback_path="/auth/callback",
           extra_authorize=(("id_token_add_organizations", "true"),
                            ("codex_cli_simplified_flow", "true"),
                            ("originator", "codex_cli_rs")),
           refresh_json=True, refresh_scope="openid profile email",
           refresh_hosts=(("auth.openai.com", "/oauth/token"),)),
    # Gemini CLI: Google OAuth (installed app), Code Assist behind it
    Vendor("gemini", "Gemini CLI (Google)", "pkce",
           "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
           "https://oauth2.googleapis.com/token", ("gemini-cli",),
           scopes=("https://www.googleapis.com/auth/cloud-platform",
                   "https://www.googleapis.com/auth/userinfo.email",
                   "https://www.googleapis.com/auth/userinfo.profile"),
           authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
           client_secret="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",
           callback_path="/oauth2callback", code_assist_url="https://cloudcode-pa.googleapis.com",
           extra_authorize=(("access_type", "offline"), ("prompt", "consent")),
           refresh_hosts=(("oauth2.googleapis.com", "/token"),)),
    # Antigravity: Google OAuth with Antigravity's own installed-app client
    Vendor("antigravity", "Antigravity (Google)", "pkce",
           "1071006060591-tmhssin2h21lcre235vtolojh4g403ep.apps.googleusercontent.com",
           "https://oauth2.googleapis.com/token", ("antigravity",),
           scopes=("https://www.googleapis.com/auth/cloud-platform",
                   "https://www.googleapis.com/auth/userinfo.email",
                   "https://www.googleapis.com/auth/userinfo.profile",
                   "https://www.googleapis.com/auth/cclog",
                   "https://www.googleapis.com/auth/experimentsandconfigs"),
           authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
           client_secret="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",
           callback_path="/oauth-callback", code_assist_url="https://cloudcode-pa.googleapis.com",
           extra_authorize=(("access_type", "offline"), ("prompt", "consent"))),
    # Qwen Code: device flow with PKCE
    Vendor("qwen", "Qwen Code (chat.qwen.ai)", "device", "f0304373b74a44d2b584a3fb70ca9e56",
           "https://chat.qwen.ai/api/v1/oauth2/token", ("qwen", "openai"),
           scopes=("openid", "profile", "email", "model.completion"),
           device_url="https://chat.qwen.ai/api/v1/oauth2/device/code", device_pkce=True,
           refresh_hosts=(("chat.qwen.ai", "/api/v1/oauth2/token"),)),
    # GitHub Copilot: GitHub device flow, then the Copilot token exchange
    Vendor("copilot", "GitHub Copilot", "device", "Iv1.b507a08c87ecfe98",
           "https://github.com/login/oauth/access_token", ("copilot", "copilot-responses"),
           scopes=("read:user",), device_url="https://github.com/login/device/code",
           api_key_url="https://api.github.com/copilot_internal/v2/token"),
    # iFlow CLI: iflow.cn's authorization code on its callback port; the access token buys
    # the API key (user info) that apis.iflow.cn takes
    Vendor("iflow", "iFlow (iflow.cn)", "iflow", "10009311001", "https://iflow.cn/oauth/token",
           ("iflow",), authorize_url="https://iflow.cn/oauth",
           client_secret="4Z3YjXycVsQvyGF1etiNlIBB4RsqSDtW", callback_port=11451,
           callback_path="/oauth2callback", basic_auth=True,
           api_key_url="https://iflow.cn/api/oauth/getUserInfo"),
)}


def vendor(name: str) -> Vendor:
    try:
        return VENDORS[name]
    except KeyError:
        raise KeyError(f"unknown login {name!r} (known: {', '.join(VENDORS)})") from None
