"""Hot reload of config.yaml through the settings addon's own watcher (issue 12): an empty or
half-written file never drops every provider and route, and a file is loaded once it holds still."""

import asyncio
import contextlib
import logging

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from addons import settings as settings_module
from addons.settings import DetourSettings

CONFIG = """\
providers:
  fake:
    kind: openai
    base_url: http://127.0.0.1:9/v1
    api_keys: [sk-test-not-a-real-key]
routes:
  claude-opus-4-8: [fake/fake-model]
"""


@pytest.fixture
def fast_polls(monkeypatch):
    monkeypatch.setattr(settings_module, "CONFIG_POLL_SECONDS", 0.02)
    monkeypatch.setattr(settings_module, "CONFIG_SETTLE_SECONDS", 0.1)


@contextlib.asynccontextmanager
async def watched(home):
    """The settings addon configured on `home`, its config watcher running."""
    (home / "config.yaml").write_text(CONFIG)
    settings = DetourSettings()
    with taddons.context(Proxyserver(), settings) as tctx:
        tctx.configure(settings, detour_home=str(home))
        watcher = asyncio.ensure_future(settings._watch_config())
        try:
            yield settings
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            settings.runtime.store.close()


async def until(condition, what: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


def logged(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("edit", ["", "# all commented out\n# providers: {}\n", "\n\n",
                                  "cooldown_seconds: 5\n"])
async def test_an_edit_that_would_drop_every_provider_is_kept_out(tmp_path, fast_polls, caplog,
                                                                    edit):
    caplog.set_level(logging.INFO, "addons.settings")
    async with watched(tmp_path) as settings:
        (tmp_path / "config.yaml").write_text(edit)
        await until(lambda: logged(caplog, "drops every provider and route"), "refusal logged")
        rt = settings.runtime
        assert list(rt.providers) == ["fake"]
        assert rt.config.candidates("claude-opus-4-8") == ["fake/fake-model"]
        assert 'routes: {"*": [passthrough]}' in caplog.text
        # the editor's real write follows: it is loaded
        (tmp_path / "config.yaml").write_text(CONFIG.replace("fake-model", "other-model"))
        await until(lambda: rt.config.candidates("claude-opus-4-8") == ["fake/other-model"],
                    "the next good edit loaded")


async def test_dropping_every_provider_on_purpose_is_loaded(tmp_path, fast_polls, caplog):
    caplog.set_level(logging.INFO, "addons.settings")
    async with watched(tmp_path) as settings:
        rt = settings.runtime
        (tmp_path / "config.yaml").write_text('# detour off for now\nroutes: {"*": [passthrough]}\n')
        await until(lambda: not rt.providers, "the deliberate edit loaded")
        assert rt.config.candidates("claude-opus-4-8") == ["passthrough"]
        assert not logged(caplog, "drops every provider")


async def test_a_file_still_being_written_is_loaded_once_it_holds_still(tmp_path, fast_polls,
                                                                        caplog):
    caplog.set_level(logging.INFO, "addons.settings")
    loaded = []
    async with watched(tmp_path) as settings:
        apply = settings._apply
        settings._apply = lambda config, providers: (loaded.append(config), apply(config,
                                                                                  providers))
        path = tmp_path / "config.yaml"
        # an editor writing in pieces, faster than the settle delay: each piece is valid YAML,
        # but only the last one is what the user meant
        text = CONFIG.replace("fake-model", "final-model")
        path.write_text(text)
        for i in range(40):
            text += f"# piece {i}\n"
            path.write_text(text)
            await asyncio.sleep(0.02)
        await until(lambda: loaded, "the finished file loaded")
        await asyncio.sleep(0.3)  # several more polls: nothing more to load
        assert len(loaded) == 1
        assert loaded[0].candidates("claude-opus-4-8") == ["fake/final-model"]
