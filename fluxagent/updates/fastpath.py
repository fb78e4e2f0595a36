"""The docker credential helper's `get` answered by the running daemon without the library stack:
the config, one control-socket request and the helper protocol are the standard library only, so a
credential the daemon holds in memory comes back in a fraction of the time the full CLI takes."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from fluxagent import config as config_mod
from fluxagent.errors import FluxError, LockHeld
from fluxagent.updates import client
from fluxagent.updates.credentials import credential_of, known_registry, monotonic
from fluxagent.updates.helpers import DOCKER_NOT_FOUND, docker_get, foreign

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TextIO

DEFAULT_CONFIG = "/etc/fluxagent/fluxagent.toml"


def docker_get_from_daemon(stdin: TextIO, stdout: TextIO, env: Mapping[str, str]) -> int | None:
    """Answer `get` from the running daemon; return the exit code, or None when no daemon answered
    (stdin is then handed on through sys.stdin, for the full command to read)."""
    server = stdin.read()
    try:
        cfg = config_mod.load(Path(env.get("FLUXAGENT_CONFIG", "").strip() or DEFAULT_CONFIG))
        sd = cfg.instance.state_dir
        if foreign(server, cfg.updates.registry or known_registry(sd)):
            stdout.write(DOCKER_NOT_FOUND + "\n")  # not the vendor's registry: no daemon, no worker, no network
            return 1
        if not (sd / client.SOCKET_NAME).exists():
            raise LockHeld("no daemon")
        answer = client.ask(sd, "credentials", cfg.server.connect_timeout + cfg.server.read_timeout + 10)
        cred = credential_of(answer)
        if not cred.usable(monotonic(), cfg.updates.min_remaining):
            raise LockHeld("about to expire")  # the full command says so, or fetches anew
    except LockHeld:
        sys.stdin = io.StringIO(server)
        return None
    except FluxError as exc:
        stdout.write(f"fluxagent: {exc.code} error: {exc.message}\n")  # docker shows stdout on failure
        return exc.exit_code
    out, code = docker_get(server, cred)
    if out:
        stdout.write(out + "\n")
    return code
