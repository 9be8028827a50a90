"""The README's worked configurations are valid config.yaml files, and every `detour ...`
command its quick start and recipes name exists."""

import re

import pytest
import yaml

from addons.config import config_warnings, parse_config
from scripts.cli import cli
from tests.harness import ROOT

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


@pytest.mark.parametrize("block", yaml_blocks(section("Worked configurations")))
def test_each_worked_configuration_is_valid_and_warns_of_nothing(block, monkeypatch):
    config = parse_config(block)
    assert config.providers and not config_warnings(config)
    assert yaml.safe_load(block)  # and plain YAML


def test_there_are_three_worked_configurations():
    assert len(yaml_blocks(section("Worked configurations"))) == 3


def test_every_detour_command_the_newcomer_sections_name_exists():
    text = section("Quick start: two commands") + section("Recipes, tool by tool") + \
        section("Troubleshooting")
    # as written in code: `detour run ...`, "$(detour env)", or a line of a sh block
    named = set(re.findall(r"(?:`|\$\(|^)detour ([a-z]+)\b", text, re.M))
    assert {"run", "status", "doctor", "stop", "up", "env", "cert"} <= named
    assert named <= set(cli.commands), named - set(cli.commands)
