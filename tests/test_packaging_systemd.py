"""The systemd unit, sysusers and tmpfiles entries: checked by systemd's own tools."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from packaging_util import PACKAGING, UNIT, require_tool, run, unit_settings

MAX_EXPOSURE = 1.5
INSTALLED_EXEC = "/opt/fluxagent/bin/fluxagent"


def test_unit_exposure_is_at_most_1_5_ok() -> None:
    tool = require_tool("systemd-analyze")
    res = run(tool, "security", "--offline=true", "--no-pager", str(UNIT))
    assert res.returncode == 0, res.stderr
    m = re.search(r"Overall exposure level for fluxagent\.service: (\d+\.\d+) (\w+)", res.stdout)
    assert m, res.stdout[-2000:]
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout
    assert m.group(2) == "OK"


def verify_copy(tmp_path: Path, text: str, dropin: Path | None = None) -> tuple[int, str]:
    """Run `systemd-analyze verify` on a copy of the unit text whose ExecStart exists; return (rc, stderr+stdout).

    verify insists the ExecStart binary exists, so the copy points at this checkout's entry point.
    """
    tool = require_tool("systemd-analyze")
    exe = Path(sys.executable).with_name("fluxagent")
    assert exe.exists(), f"{exe} missing: install the project into this venv"
    assert INSTALLED_EXEC in text
    copy = tmp_path / "fluxagent.service"
    copy.write_text(text.replace(INSTALLED_EXEC, str(exe)), encoding="utf-8")
    if dropin is not None:
        (tmp_path / "fluxagent.service.d").mkdir()
        shutil.copy(dropin, tmp_path / "fluxagent.service.d" / dropin.name.removesuffix(".example"))
    res = run(tool, "verify", "--man=no", str(copy))
    return res.returncode, (res.stderr + res.stdout).strip()


def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    rc, out = verify_copy(tmp_path, UNIT.read_text(encoding="utf-8"))
    assert (rc, out) == (0, "")  # verify warns on stderr and still exits 0: both must be clean


def test_unit_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    _, out = verify_copy(tmp_path, UNIT.read_text(encoding="utf-8").replace("Type=notify", "Type=notifyy"))
    assert "notifyy" in out


def test_unit_keeps_the_settings_operators_rely_on() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert s["Restart"] == ["on-failure"]
    assert s["ExecReload"][-1] == "kill -HUP $MAINPID"
    assert s["User"] == ["fluxagent"] and "DynamicUser" not in s
    assert s["CapabilityBoundingSet"] == [""]
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    assert "ProcSubset" not in s  # psutil needs /proc/stat and friends
    assert set(s["RestrictAddressFamilies"][0].split()) >= {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert s["WatchdogSec"] and s["StartLimitBurst"]
    assert s["ConditionPathExists"] == ["/etc/fluxagent/fluxagent.toml"]  # no config: stay inactive


def test_ip_allowlist_dropin_example_verifies_with_the_unit(tmp_path: Path) -> None:
    example = PACKAGING / "systemd" / "ip-allowlist.conf.example"
    dropin = unit_settings(example)
    assert dropin["IPAddressDeny"] == ["any"]
    assert dropin["IPAddressAllow"]
    assert verify_copy(tmp_path, UNIT.read_text(encoding="utf-8"), dropin=example) == (0, "")


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """An empty file-system root holding the package's sysusers.d and tmpfiles.d entries."""
    if os.geteuid() != 0:
        pytest.skip("creating users and chowning directories in a test root needs root")
    root = tmp_path / "root"
    for kind in ("sysusers.d", "tmpfiles.d"):
        (root / "usr/lib" / kind).mkdir(parents=True)
        shutil.copy(PACKAGING / kind / "fluxagent.conf", root / "usr/lib" / kind / "fluxagent.conf")
    (root / "etc").mkdir()
    return root


def test_sysusers_creates_a_static_system_user_without_a_login_shell(fake_root: Path) -> None:
    tool = require_tool("systemd-sysusers")
    res = run(tool, f"--root={fake_root}", "fluxagent.conf")
    assert res.returncode == 0, res.stderr
    fields = next(line for line in (fake_root / "etc/passwd").read_text().splitlines()
                  if line.startswith("fluxagent:")).split(":")
    assert int(fields[2]) < 1000  # a system user
    assert fields[5] == "/var/lib/fluxagent" and fields[6] == "/usr/sbin/nologin"


def test_tmpfiles_makes_config_dir_root_group_readable_and_state_private(fake_root: Path) -> None:
    run(require_tool("systemd-sysusers"), f"--root={fake_root}", "fluxagent.conf")
    res = run(require_tool("systemd-tmpfiles"), f"--root={fake_root}", "--create", "fluxagent.conf")
    assert res.returncode == 0, res.stderr
    gid = int(next(line for line in (fake_root / "etc/group").read_text().splitlines()
                   if line.startswith("fluxagent:")).split(":")[2])
    etc = (fake_root / "etc/fluxagent").stat()
    assert (etc.st_mode & 0o7777, etc.st_uid, etc.st_gid) == (0o750, 0, gid)
    st = (fake_root / "var/lib/fluxagent").stat()
    assert (st.st_mode & 0o7777, st.st_gid) == (0o700, gid)
    assert st.st_uid != 0


def test_metrics_publisher_units_verify(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    units = [PACKAGING / "systemd" / n for n in ("fluxagent-metrics.service", "fluxagent-metrics.timer")]
    res = run(tool, "verify", "--man=no", *map(str, units))
    assert (res.returncode, (res.stderr + res.stdout).strip()) == (0, "")


def test_metrics_publisher_command_copies_the_file_whole_and_world_readable(tmp_path: Path) -> None:
    unit = PACKAGING / "systemd" / "fluxagent-metrics.service"
    command = unit_settings(unit)["ExecStart"][0]
    assert command.startswith("/bin/sh -c '") and command.endswith("'")
    state, textdir = tmp_path / "state", tmp_path / "textfile"
    state.mkdir(mode=0o700)
    textdir.mkdir()
    (state / "metrics.prom").write_text("fluxagent_spool_messages 3\n")
    (state / "metrics.prom").chmod(0o600)
    script = (command[len("/bin/sh -c '"):-1].replace("/var/lib/fluxagent", str(state))
              .replace("/var/lib/prometheus/node-exporter", str(textdir)))
    for _ in range(2):  # a second run replaces the file
        res = run("/bin/sh", "-c", script)
        assert res.returncode == 0, res.stderr
    published = textdir / "fluxagent.prom"
    assert published.read_text() == "fluxagent_spool_messages 3\n"
    assert published.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in textdir.iterdir()] == ["fluxagent.prom"]


def test_reload_checks_the_config_first_so_a_broken_file_fails_the_reload_and_the_daemon_keeps_the_old(
    tmp_path: Path,
) -> None:
    import subprocess

    check, hup = unit_settings()["ExecReload"]
    assert hup == "kill -HUP $MAINPID"  # only reached when the check passed: systemd runs them in order
    argv = check.split()
    assert argv[0] == INSTALLED_EXEC and argv[1:3] == ["--config", "/etc/fluxagent/fluxagent.toml"], check
    exe = str(Path(sys.executable).with_name("fluxagent"))
    env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    broken = tmp_path / "fluxagent.toml"
    broken.write_text('[instance]\nbound_domain = "billing.example.com"\n[schedule]\nheartbeat = "often"\n')
    done = subprocess.run([exe, "--config", str(broken), *argv[3:]], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 78, done.stdout + done.stderr
    assert "schedule.heartbeat" in done.stderr and str(broken) in done.stderr
    good = tmp_path / "good.toml"
    good.write_text('[instance]\nbound_domain = "billing.example.com"\nstate_dir = "/nonexistent/state"\n')
    done = subprocess.run([exe, "--config", str(good), *argv[3:]], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr  # the config alone: no state dir, no identity needed
    assert str(good) in done.stdout
