"""The shipped systemd unit (SPEC §7): `systemd-analyze verify` accepts it, and it carries the
notify, reload, restart and hardening settings the spec asks for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "cascade-scheduler.service"


def _sections(text: str) -> dict[str, dict[str, list[str]]]:
    """The unit as {section: {key: [values...]}} (keys may repeat in unit files)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _console_script() -> str:
    """The real installed `cascade-scheduler` executable (not a pyenv shim), or python -m."""
    beside = Path(sys.executable).with_name("cascade-scheduler")
    if beside.is_file():
        return str(beside)
    found = shutil.which("cascade-scheduler")
    return found if found else f"{sys.executable} -m scheduler"


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    """The [Service] section of the shipped unit."""
    return _sections(UNIT.read_text("utf-8"))["Service"]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 and has nothing to say about the unit, once ExecStart
    points at the real installed binary (the unit ships with the /opt/cascade-scheduler venv)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    text = UNIT.read_text("utf-8")
    assert "ExecStart=/opt/cascade-scheduler/bin/cascade-scheduler run " in text
    unit = tmp_path / UNIT.name
    binary = f"ExecStart={_console_script()}"
    shipped = "ExecStart=/opt/cascade-scheduler/bin/cascade-scheduler"
    unit.write_text(text.replace(shipped, binary), "utf-8")
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    problems = [line for line in output.splitlines() if UNIT.name in line or str(unit) in line]
    assert problems == [], output


def test_unit_is_notify_with_sighup_reload(service: dict[str, list[str]]) -> None:
    """Type=notify (READY/RELOADING/STOPPING), reload by SIGHUP (systemd 252 has no
    notify-reload), a watchdog, and the run command with an explicit config."""
    assert service["Type"] == ["notify"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert int(service["WatchdogSec"][0]) > 0
    assert service["ExecStart"][0].endswith(" run --config /etc/cascade-scheduler/config.toml")


def test_unit_restarts_on_failure(service: dict[str, list[str]]) -> None:
    """Restart=on-failure with a RestartSec, and a stop timeout longer than a request's."""
    assert service["Restart"] == ["on-failure"]
    assert int(service["RestartSec"][0]) > 0
    assert int(service["TimeoutStopSec"][0]) >= 30


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DynamicUser", "yes"),
        ("StateDirectory", "cascade-scheduler"),
        ("LogsDirectory", "cascade-scheduler"),
        ("ConfigurationDirectory", "cascade-scheduler"),
        ("NoNewPrivileges", "yes"),
        ("UMask", "0077"),
    ],
)
def test_unit_hardening(service: dict[str, list[str]], key: str, value: str) -> None:
    """Every hardening setting SPEC §7 lists, with the expected value."""
    assert service.get(key) == [value]


def test_unit_loads_the_api_key_as_a_credential(service: dict[str, list[str]]) -> None:
    """The key arrives as $CREDENTIALS_DIRECTORY/api-key, the name the config loader reads, and
    never through Environment=."""
    assert [v.split(":", 1)[0] for v in service["LoadCredential"]] == ["api-key"]
    environment = " ".join(service.get("Environment", []))
    assert "CASCADE_API_KEY" not in environment


def test_unit_shows_the_keys_of_two_accounts() -> None:
    """The commented example for ``[[accounts]]`` loads one key per account, under the
    names the config loader reads for them (`account_key_source`)."""
    from scheduler.config import account_key_source

    example = "\n".join(line.removeprefix("#") for line in UNIT.read_text("utf-8").splitlines()
                        if line.startswith("#LoadCredential=api-key-"))
    names = [v.split(":", 1)[0] for v in _sections("[Service]\n" + example)["Service"][
        "LoadCredential"]]
    assert names == [account_key_source(a)[1] for a in ("brand-a", "brand-b")]


def test_unit_documentation_is_the_readme_the_install_steps_put_there() -> None:
    """`Documentation=` names the project's README at the path the README's own install steps
    copy it to (not systemd's man page, not a placeholder URL), so `systemctl help
    cascade-scheduler` opens it on the server (issue 9, item 17)."""
    (documentation,) = _sections(UNIT.read_text("utf-8"))["Unit"]["Documentation"]
    assert documentation.startswith("file:/"), documentation
    installed = documentation.removeprefix("file:")
    readme = (REPO / "README.md").read_text("utf-8")
    assert f"sudo install -D -m 0644 README.md {installed}" in readme
