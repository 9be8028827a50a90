"""A stand-in browser for login tests (`BROWSER="python tests/fakes/browser.py %s"`, which
Python's webbrowser honours): opens the authorize URL and follows its redirects, so the
login's local callback gets the code as from a real browser. Exits 0 once the last page
answered."""

import sys

import httpx

if __name__ == "__main__":
    with httpx.Client(trust_env=False, follow_redirects=True, timeout=20) as http:
        http.get(sys.argv[1])
