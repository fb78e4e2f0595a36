"""Logging: JSON with `<N>` priority prefixes under journald, plain JSON off a TTY, console on a TTY,
and secrets redacted whatever the format."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator

import pytest

from fluxagent import logs

SECRETS = {"secret": "s3cr3t-value", "password": "pw-value-1", "token": "tok-value-2",
           "signing_key": "key-value-3", "authorization": "Bearer abc-value-4"}
PROXY = "http://agent:hunter2-value@127.0.0.1:3128"


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    yield
    logs.configure("json", "info", stream=io.StringIO(), env={})


def emit_all() -> None:
    log = logs.get()
    log.debug("debug.event")
    log.info("heartbeat.sent", seq=42, bytes=812)
    log.warning("delivery.outage_started", reason="connect: refused")
    log.error("config.reload_failed", error="bad")


def test_journald_json_lines_carry_syslog_priority_prefixes() -> None:
    buf = io.StringIO()
    logs.configure("json", "debug", stream=buf, env={"JOURNAL_STREAM": "8:12345"})
    emit_all()
    lines = buf.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    events = [json.loads(line[3:]) for line in lines]
    assert events[1]["event"] == "heartbeat.sent" and events[1]["seq"] == 42


def test_auto_format_off_a_tty_is_plain_json_without_prefixes() -> None:
    buf = io.StringIO()
    logs.configure("auto", "info", stream=buf, env={})
    emit_all()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3  # debug filtered at info
    assert all(json.loads(line)["level"] in ("info", "warning", "error") for line in lines)


def test_auto_format_on_a_tty_is_the_console_renderer() -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        logs.configure("auto", "info", stream=tty, env={"JOURNAL_STREAM": "8:1"})
        logs.get().info("heartbeat.sent", seq=42)
        tty.flush()
        out = os.read(master, 4096).decode()
    os.close(master)
    assert "heartbeat.sent" in out and "seq=42" in out
    assert not out.lstrip().startswith(("{", "<"))


@pytest.mark.parametrize("fmt,env", [("json", {}), ("json", {"JOURNAL_STREAM": "8:1"}), ("console", {})])
def test_secrets_are_redacted_in_every_format(fmt: str, env: dict[str, str]) -> None:
    buf = io.StringIO()
    logs.configure(fmt, "info", stream=buf, env=env)
    logs.get().info("transport.configured", proxy=PROXY, **SECRETS)
    out = buf.getvalue()
    for value in [*SECRETS.values(), "hunter2-value"]:
        assert value not in out
    assert "agent:***@127.0.0.1:3128" in out and "transport.configured" in out
