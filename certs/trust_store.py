"""Trusting the CA system-wide: the commands for each operating system (data; running them, with
the user's consent, is `detour cert install`'s job).

Which store each system's programs read:
- Debian, Ubuntu, Alpine: PEM files in /usr/local/share/ca-certificates/*.crt, merged into
  /etc/ssl/certs/ca-certificates.crt by `update-ca-certificates`;
- Fedora, RHEL, Arch, openSUSE (p11-kit): anchors in /etc/pki/ca-trust/source/anchors/ or
  /etc/ca-certificates/trust-source/anchors/, merged by `update-ca-trust`;
- macOS: a keychain, with `security add-trusted-cert` (the System keychain for every user,
  the login keychain for one);
- Windows: the Root store, with `certutil -addstore` (`-user`: the current user's, no admin).

Node and Bun (Claude Code, Gemini CLI, Qwen Code) read none of these by default: they keep
using NODE_EXTRA_CA_CERTS, which `detour run` and `detour env` set.
"""

from dataclasses import dataclass, field
from pathlib import Path

INSTALLED_NAME = "detour-mitmproxy-ca.crt"

DEBIAN_ANCHORS = Path("/usr/local/share/ca-certificates")
P11_ANCHORS = (Path("/etc/pki/ca-trust/source/anchors"),
               Path("/etc/ca-certificates/trust-source/anchors"))
NODE_NOTE = ("Node and Bun tools (Claude Code, Gemini CLI, Qwen Code) do not read the system "
             "store: they still need NODE_EXTRA_CA_CERTS, which `detour run` and `detour env` set")


@dataclass(frozen=True)
class TrustPlan:
    """How to trust a CA file on one system: argv lists run in order."""

    system: str
    steps: list[list[str]] = field(default_factory=list)
    admin: bool = True  # the steps change a store every user shares
    note: str = ""

    @property
    def supported(self) -> bool:
        return bool(self.steps)


def linux_plan(ca_cert: Path, *, root: Path = Path("/")) -> TrustPlan:
    """The plan for the Linux whose trust store layout is found under `root` (tests pass a
    temporary folder; the commands then name paths inside it)."""
    debian = root / DEBIAN_ANCHORS.relative_to("/")
    if debian.is_dir():
        return TrustPlan("linux (update-ca-certificates)", [
            ["cp", str(ca_cert), str(debian / INSTALLED_NAME)],
            ["update-ca-certificates"],
        ], note=NODE_NOTE)
    for anchors in P11_ANCHORS:
        anchors = root / anchors.relative_to("/")
        if anchors.is_dir():
            return TrustPlan("linux (update-ca-trust)", [
                ["cp", str(ca_cert), str(anchors / INSTALLED_NAME)],
                ["update-ca-trust", "extract"],
            ], note=NODE_NOTE)
    return TrustPlan("linux (unknown trust store)", note=(
        "no known trust store layout (neither /usr/local/share/ca-certificates nor "
        "/etc/pki/ca-trust/source/anchors): add the CA with your distribution's tool. "
        + NODE_NOTE))


def macos_plan(ca_cert: Path, *, system_wide: bool = True) -> TrustPlan:
    if system_wide:
        return TrustPlan("macos (System keychain)", [[
            "security", "add-trusted-cert", "-d", "-r", "trustRoot", "-k",
            "/Library/Keychains/System.keychain", str(ca_cert)]], note=NODE_NOTE)
    return TrustPlan("macos (login keychain)", [[
        "security", "add-trusted-cert", "-r", "trustRoot", "-k",
        str(Path("~/Library/Keychains/login.keychain-db").expanduser()), str(ca_cert)]],
        admin=False, note=NODE_NOTE)


def windows_plan(ca_cert: Path, *, system_wide: bool = False) -> TrustPlan:
    # the .cer beside the PEM holds the same bytes; certutil reads PEM either way
    if system_wide:
        return TrustPlan("windows (machine Root store)", [
            ["certutil", "-addstore", "-f", "Root", str(ca_cert)]], note=NODE_NOTE)
    return TrustPlan("windows (current user's Root store)", [
        ["certutil", "-addstore", "-user", "-f", "Root", str(ca_cert)]], admin=False,
        note="Windows asks to confirm in a dialog. " + NODE_NOTE)


def install_plan(ca_cert: Path, platform: str, *, system_wide: bool = True,
                 root: Path = Path("/")) -> TrustPlan:
    """`platform` as sys.platform says it (linux, darwin, win32)."""
    if platform.startswith("linux"):
        return linux_plan(ca_cert, root=root)
    if platform == "darwin":
        return macos_plan(ca_cert, system_wide=system_wide)
    if platform in ("win32", "cygwin"):
        return windows_plan(ca_cert, system_wide=system_wide)
    return TrustPlan(platform, note=f"no known way to trust a CA on {platform}: add "
                     f"{ca_cert} to its trust store by hand. " + NODE_NOTE)


def with_privileges(step: list[str], *, admin: bool, is_root: bool, has_sudo: bool) -> list[str]:
    """A step that changes a shared store runs under sudo unless we are root already."""
    if admin and not is_root and has_sudo:
        return ["sudo", *step]
    return step
