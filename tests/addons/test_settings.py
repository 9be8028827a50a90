import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from addons.config import DEFAULT_CONFIG_YAML
from addons.settings import DetourSettings


def test_defaults_observe_mode_and_lazy_connections(tmp_path):
    settings = DetourSettings()
    with taddons.context(Proxyserver(), settings) as tctx:
        tctx.configure(settings, detour_home=str(tmp_path))
        assert tctx.options.connection_strategy == "lazy"
        rt = settings.runtime
        assert (tmp_path / "config.yaml").read_text() == DEFAULT_CONFIG_YAML
        assert (tmp_path / "detour.db").exists()
        assert rt.config.candidates("claude-opus-4-8") == ["passthrough"]
        # a user's eager is overridden: eager would dial the vendor before detour decides
        tctx.configure(settings, connection_strategy="eager")
        assert tctx.options.connection_strategy == "lazy"
        rt.store.close()


def test_bad_config_fails_at_start_naming_the_field(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "providers:\n  x: {kind: openai, base_url: http://a, api_keys: [env:DETOUR_UNSET_VAR]}\n")
    settings = DetourSettings()
    with taddons.context(Proxyserver(), settings) as tctx:
        with pytest.raises(exceptions.OptionsError,
                           match=r"providers\.x\.api_keys\[0\]: environment variable"):
            tctx.configure(settings, detour_home=str(tmp_path))


def test_explicit_config_path(tmp_path):
    cfg = tmp_path / "elsewhere.yaml"
    cfg.write_text("routes: {'*': [passthrough]}\ncooldown_seconds: 5\n")
    settings = DetourSettings()
    with taddons.context(Proxyserver(), settings) as tctx:
        tctx.configure(settings, detour_home=str(tmp_path / "home"), detour_config=str(cfg))
        assert settings.runtime.config.cooldown_seconds == 5
        assert not (tmp_path / "home" / "config.yaml").exists()
        settings.runtime.store.close()
