"""The Dockerfile, read (no Docker daemon needed): what it copies exists, the image runs as a
non-root user with DETOUR_HOME on a volume, and its command is one `detour` accepts."""

import shlex

from tests.harness import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_what_it_copies_exists_and_what_it_leaves_out_is_not_needed():
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), source


def test_non_root_with_a_volume_for_detour_home():
    found = instructions()
    users = [rest for keyword, rest in found if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENV", "DETOUR_HOME=/data PYTHONUNBUFFERED=1") in found
    assert ("VOLUME", '["/data"]') in found


def test_its_command_is_detour_up_on_every_interface_allowed(detour):
    import json

    found = dict((k, v) for k, v in instructions() if k in ("ENTRYPOINT", "CMD"))
    argv = json.loads(found["ENTRYPOINT"]) + json.loads(found["CMD"])
    assert argv == ["detour", "--confdir", "/data/mitmproxy", "up", "--host", "0.0.0.0",
                    "--allow-remote"]
    # the same options, checked by detour's own parser
    assert detour(*argv[3:], "--help").exit_code == 0
