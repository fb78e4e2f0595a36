"""The control-socket client: commands ask the running daemon (one JSON line each way)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from fluxagent.errors import EXIT_UNAVAILABLE, FluxError, LockHeld

TYPE_CHECKING = False  # the supervisor imports this module: typing stays out of its memory
if TYPE_CHECKING:
    from typing import Any

SOCKET_NAME = "control.sock"
MAX_LINE = 64 * 1024


class RemoteError(FluxError):
    """An error the daemon reported while serving a request; keeps its code and exit code."""

    def __init__(self, code: str, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.exit_code = code, exit_code


class NoDaemon(LockHeld):
    """Nothing listens on the control socket: no daemon runs for this state directory."""

    code = "no_daemon"
    exit_code = EXIT_UNAVAILABLE


def ask(state_dir: Path, request: str, timeout: float) -> dict[str, Any]:
    """Send one request to the running daemon and return its answer.

    Raises NoDaemon when nothing listens, LockHeld when the daemon does not answer, RemoteError when it
    answers with an error.
    """
    path = state_dir / SOCKET_NAME
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise NoDaemon(f"no fluxagent daemon is running on {state_dir} (nothing listens on {path})") from None
            s.sendall(request.encode() + b"\n")
            line = s.makefile("rb").readline(MAX_LINE)
        answer = json.loads(line)
    except (OSError, ValueError) as exc:
        raise LockHeld(f"another fluxagent holds {state_dir / 'lock'} and does not answer on {path}: {exc}",
                       hint="only one agent may run per state directory; is it an older version?") from None
    if not isinstance(answer, dict):
        raise LockHeld(f"the daemon's answer on {path} is not understood")
    if not answer.get("ok"):
        raise RemoteError(str(answer.get("code", "error")), int(answer.get("exit_code", 1)),
                          str(answer.get("message", "the daemon could not serve the request")))
    return answer


