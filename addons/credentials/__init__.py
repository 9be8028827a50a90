"""Accounts detour holds itself: API keys added with `detour account add` and subscription
logins (`detour account login` / `import`), kept in detour.db (or the Postgres database of
`database:`, shared by every process) with their secrets encrypted.

- `vault.py`: the encryption key (the OS keyring when one works, else a 0600 key file in
  DETOUR_HOME; on several hosts, the one the operator gives each in DETOUR_CREDENTIALS_KEY or
  DETOUR_CREDENTIALS_KEY_FILE) and MultiFernet encryption, so the key can be rotated.
- `store.py`: the `accounts` table (migrated by version), every write in one transaction that
  also bumps a revision a running proxy polls; `store_postgres.py`: the same on Postgres.
- `vendors.py`: each subscription's public OAuth constants (every URL overridable by
  environment) and how its token endpoint wants to be spoken to.
- `oauth.py`: token requests (refresh, code exchange, device flow) and their errors.
- `provider.py`: what the request path asks: an account's current credential headers; refresh
  ahead of expiry, single-flight per account, rotated tokens committed before use.
- `logins.py`, `importers.py`: the login flows and adopting the CLIs' own credential files.
- `code_assist.py`: each Google login's Code Assist project (`kind: gemini-cli`), found once
  per account on the request path when the login has none yet, and kept.
- `owner.py`: the mitmproxy addon that answers the CLIs' own refresh calls for logins detour
  holds (one owner per login), and picks up accounts added while the proxy runs.
"""
