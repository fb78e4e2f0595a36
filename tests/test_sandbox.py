"""The sandbox self-test: the unit's seccomp settings as filters, and the agent's real work under them."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging_util import UNIT, require_tool

from fluxagent.diagnostics.sandbox import PROT_EXEC, PROT_WRITE, filters, parse_groups, unit_sandbox
from fluxagent.diagnostics.seccomp import ACT_ALLOW, ACT_KILL_PROCESS, CMP_MASKED_EQ, Libseccomp, act_errno

GROUPS_TEXT = """\
@default
    # System calls that are always permitted
    exit_group
    read
@basic-io
    write
@service
    # a group that includes others
    @basic-io
    flock
    setpriority
@resources
    setpriority

# Ungrouped System Calls:
#   ugly
"""


def test_parse_groups_reads_members_and_nested_groups_but_not_comments() -> None:
    groups = parse_groups(GROUPS_TEXT)
    assert groups["@service"] == ["@basic-io", "flock", "setpriority"]
    assert groups["@default"] == ["exit_group", "read"]
    assert set(groups) == {"@default", "@basic-io", "@service", "@resources"}


def test_unit_sandbox_merges_an_allow_list_with_a_later_deny_list_and_the_implicit_default() -> None:
    unit = "[Service]\nSystemCallFilter=@service\nSystemCallFilter=~@resources\nSystemCallErrorNumber=EPERM\n"
    sb = unit_sandbox(unit, parse_groups(GROUPS_TEXT) | {"@default": ["exit_group", "read"]})
    assert sb.allow_list
    assert {"write", "flock", "read", "exit_group", "execve"} <= sb.syscalls
    assert "setpriority" not in sb.syscalls
    assert sb.error_number == errno.EPERM


def test_unit_sandbox_rejects_an_unknown_group() -> None:
    with pytest.raises(KeyError):
        unit_sandbox("SystemCallFilter=@nonesuch\n", parse_groups(GROUPS_TEXT))


def test_filters_refuse_write_execute_memory_and_load_the_syscall_filter_last() -> None:
    unit = "SystemCallFilter=@service\nMemoryDenyWriteExecute=yes\nRestrictAddressFamilies=AF_UNIX\n"
    fs = filters(unit_sandbox(unit, parse_groups(GROUPS_TEXT)))
    assert [f.default for f in fs] == [ACT_ALLOW, ACT_ALLOW, ACT_KILL_PROCESS]
    mmap_rule = next(r for r in fs[0].rules if r.syscall == "mmap")
    wx = PROT_WRITE | PROT_EXEC
    assert mmap_rule.action == act_errno(errno.EPERM) and mmap_rule.conditions == ((2, CMP_MASKED_EQ, wx, wx),)
    refused_families = {r.conditions[0][2] for r in fs[1].rules}
    assert 1 not in refused_families and 2 in refused_families  # AF_UNIX allowed, AF_INET refused


def test_the_units_allow_list_comes_from_systemd_analyze_groups() -> None:
    require_tool("systemd-analyze")
    from fluxagent.diagnostics.sandbox import systemd_groups

    sb = unit_sandbox(UNIT.read_text(encoding="utf-8"), systemd_groups())
    assert sb.allow_list and sb.deny_write_execute
    assert {"flock", "fsync", "connect", "openat", "mmap"} <= sb.syscalls
    assert not {"setrlimit", "chown", "setuid", "mount"} & sb.syscalls  # ~@privileged @resources


def _self_test(unit: Path) -> subprocess.CompletedProcess[str]:
    require_tool("systemd-analyze")
    try:
        Libseccomp()
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("libseccomp.so.2 is missing; CI must install libseccomp2")
        pytest.skip("libseccomp.so.2 is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("FLUXAGENT_CONFIG", "NOTIFY_SOCKET")}
    return subprocess.run([sys.executable, "-m", "fluxagent.diagnostics.selftest", "--unit", str(unit)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)


def test_agent_work_passes_under_the_units_syscall_filter_and_memory_deny_write_execute() -> None:
    res = _self_test(UNIT)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.count("the filter is live") == 3  # the canaries prove the filters hold
    assert "license.sent, heartbeat.sent, digest.sent" in out
    for step in ("daemon", "sign+hash", "psutil", "flock", "metrics.prom", "log --verify", "sd_notify"):
        assert f"  ok    {step}:" in out
    assert out.rstrip().endswith("PASS")


@pytest.mark.parametrize(("change", "failing"), [
    # psutil lists interfaces over netlink: without AF_NETLINK the agent cannot read this host
    (("AF_INET AF_INET6 AF_UNIX AF_NETLINK", "AF_INET AF_INET6 AF_UNIX"), "FAIL  psutil"),
    # every state file is fsynced: filtering @sync must break the run
    (("SystemCallFilter=~@privileged @resources", "SystemCallFilter=~@privileged @resources @sync"),
     "FAIL  run --once"),
])
def test_self_test_fails_when_the_unit_takes_away_something_the_agent_needs(
        tmp_path: Path, change: tuple[str, str], failing: str) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert change[0] in text
    unit = tmp_path / "fluxagent.service"
    unit.write_text(text.replace(change[0], change[1]), encoding="utf-8")
    res = _self_test(unit)
    assert res.returncode == 1
    assert failing in res.stdout
    assert res.stdout.rstrip().endswith("FAIL")
