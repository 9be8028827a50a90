"""The `detour` package of the installed wheel (this file becomes its `__init__.py`).

The repository's top-level folders (addons, translators, certs, scripts) ship inside this
package, not as top-level packages of their own (generic names that would collide with other
distributions). They import each other by those top-level names, so the `detour` command puts
this package's own folder first on sys.path, in its own process only, before loading the CLI;
mitmproxy loads `detour/addons/router.py`, which does the same for itself. In a development
checkout (an editable install) the repository root is on sys.path already and this package
holds nothing else.
"""

import sys
from pathlib import Path


def main() -> None:
    here = Path(__file__).resolve().parent
    if (here / "scripts").is_dir() and str(here) not in sys.path:
        sys.path.insert(0, str(here))
    from scripts.cli import cli

    cli()
