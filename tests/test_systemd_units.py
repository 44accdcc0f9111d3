"""The systemd units in systemd/: required settings, then `systemd-analyze verify` when it can run.

`systemd-analyze verify` exits 0 on many real mistakes (an unknown key, an unparsable
value: it logs "..., ignoring" and goes on), so the verify tests also fail on any
message about our units, and one test checks that a deliberately broken copy is
caught in this environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT_DIR = ROOT / "systemd"
BROKER = UNIT_DIR / "cutq-broker.service"
WORKER = UNIT_DIR / "cutq-worker@.service"
ENV_EXAMPLE = UNIT_DIR / "cutq.env.example"
INSTALL_PREFIX = "/opt/cutq/.venv/bin/cutq"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """A systemd unit file as {section: {key: [values in order]}}.

    Repeated keys (Environment=, ReadWritePaths=) keep every value, which configparser
    cannot; comments (# and ;) and blank lines are skipped; a trailing backslash joins
    the next line, as systemd does.
    """
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    """The single value of ``key``; fails when it is missing or set more than once."""
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= expected once, found {values!r}"
    return values[0]


@pytest.fixture(scope="module")
def broker() -> Unit:
    return parse_unit(BROKER.read_text())


@pytest.fixture(scope="module")
def worker() -> Unit:
    return parse_unit(WORKER.read_text())


COMMON = {
    ("Service", "Type"): "notify",
    ("Service", "NotifyAccess"): "main",
    ("Service", "WatchdogSec"): "10",
    ("Service", "Restart"): "on-failure",
    ("Service", "RestartSec"): "2",
    ("Service", "TimeoutStopSec"): "40",
    ("Service", "KillSignal"): "SIGTERM",
    ("Service", "EnvironmentFile"): "-/etc/cutq/cutq.env",
    ("Service", "User"): "cutq",
    ("Service", "Group"): "cutq",
    ("Service", "NoNewPrivileges"): "yes",
    ("Service", "ProtectSystem"): "strict",
    ("Service", "ProtectHome"): "yes",
    ("Service", "PrivateTmp"): "yes",
    ("Service", "ProtectKernelTunables"): "yes",
    ("Service", "ProtectControlGroups"): "yes",
    ("Service", "RestrictSUIDSGID"): "yes",
    ("Service", "LockPersonality"): "yes",
    ("Install", "WantedBy"): "multi-user.target",
}


@pytest.mark.parametrize("name", ["broker", "worker"])
@pytest.mark.parametrize(("section", "key"), sorted(COMMON))
def test_common_settings(request: pytest.FixtureRequest, name: str, section: str, key: str) -> None:
    unit = request.getfixturevalue(name)
    assert one(unit, section, key) == COMMON[(section, key)]


def test_broker_specifics(broker: Unit) -> None:
    assert one(broker, "Service", "ExecStart") == f"{INSTALL_PREFIX} broker --data /var/lib/cutq"
    assert one(broker, "Service", "StateDirectory") == "cutq"
    assert "/var/lib/cutq" in broker["Service"]["ReadWritePaths"]
    assert one(broker, "Service", "PrivateDevices") == "yes"


def test_worker_specifics(worker: Unit) -> None:
    assert one(worker, "Service", "ExecStart") == f"{INSTALL_PREFIX} worker --concurrency %i"
    assert "/var/lib/cutq-models" in worker["Service"]["ReadWritePaths"]
    assert "U2NET_HOME=/var/lib/cutq-models" in worker["Service"]["Environment"]
    # The environment file comes after the default, so cutq.env can override it.
    text = WORKER.read_text()
    assert text.index("Environment=U2NET_HOME") < text.index("EnvironmentFile=")
    # SIGTERM to the daemon only, or the slot processes die before the drain can finish.
    assert one(worker, "Service", "KillMode") == "mixed"
    # A GPU needs /dev; onnxruntime and numba need writable+executable memory.
    assert worker["Service"].get("PrivateDevices", ["no"]) == ["no"]
    assert worker["Service"].get("MemoryDenyWriteExecute", ["no"]) == ["no"]


def test_env_example_is_plain_assignments() -> None:
    keys = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", line), f"not KEY=value: {line!r}"
        keys.append(line.split("=", 1)[0])
    assert "CUTQ_CONNECT" in keys


# ------------------------------------------------------------ systemd-analyze verify

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
TRUE = shutil.which("true") or "/bin/true"


def _verify(directory: Path, *names: str) -> tuple[int, str]:
    """`systemd-analyze verify` on units in ``directory``; (exit status, messages)."""
    assert SYSTEMD_ANALYZE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}
    env["SYSTEMD_LOG_COLOR"] = "0"
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *(str(directory / n) for n in names)],
        capture_output=True, text=True, timeout=60, env=env, cwd=directory, check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@lru_cache(maxsize=1)
def _unusable_reason() -> str | None:
    """Why verify cannot be trusted here (None when it can): a known-good unit and a
    known-good template instance must pass cleanly first."""
    if SYSTEMD_ANALYZE is None:
        return "systemd-analyze not on PATH (make deps installs the systemd package)"
    with tempfile.TemporaryDirectory(prefix="cutq-sd-probe-") as d:
        probe = Path(d)
        (probe / "cutq-probe.service").write_text(
            f"[Unit]\nDescription=probe\n\n[Service]\nType=oneshot\nExecStart={TRUE}\n"
        )
        (probe / "cutq-probe-tpl@.service").write_text(
            f"[Unit]\nDescription=probe %i\n\n[Service]\nType=oneshot\nExecStart={TRUE} %i\n"
        )
        try:
            rc, out = _verify(probe, "cutq-probe.service", "cutq-probe-tpl@1.service")
        except (OSError, subprocess.SubprocessError) as e:
            return f"systemd-analyze verify cannot run here: {e}"
    if rc != 0 or out:
        first = out.splitlines()[0] if out else ""
        return f"systemd-analyze verify fails on a trivial unit here (exit {rc}): {first}"
    return None


@pytest.fixture
def verify_dir(tmp_path: Path) -> Path:
    """Copies of both units with ExecStart's binary (absent here) replaced by `true`.

    The arguments stay, and so do User=/Group=: verify does not resolve users (that
    happens at start), so the only messages left are about real unit errors.
    """
    reason = _unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    for src in (BROKER, WORKER):
        text = src.read_text()
        assert INSTALL_PREFIX in text
        (tmp_path / src.name).write_text(text.replace(f"ExecStart={INSTALL_PREFIX}", f"ExecStart={TRUE}"))
    return tmp_path


def _our_messages(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if "cutq-" in ln]


def test_units_pass_systemd_analyze_verify(verify_dir: Path) -> None:
    # The worker is verified as an instance of the template, as systemctl would load it.
    rc, out = _verify(verify_dir, "cutq-broker.service", "cutq-worker@2.service")
    assert rc == 0, out
    assert _our_messages(out) == [], out


def test_verify_check_catches_a_broken_unit(verify_dir: Path) -> None:
    """The checks above are not vacuous: a bad value (exit 0, one message) is caught."""
    path = verify_dir / WORKER.name
    path.write_text(path.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    rc, out = _verify(verify_dir, "cutq-worker@2.service")
    assert rc != 0 or _our_messages(out), out
    assert "sometimes" in out
