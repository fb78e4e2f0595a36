"""Update credentials: request them, verify the receipt, hold them in memory until they expire.

Expiry is kept on a monotonic clock (CLOCK_BOOTTIME: it never jumps with the wall clock and keeps
counting through suspend, as the server's clock does); the wall clock is used only to show the
expiry to people and to git (`password_expiry_utc`). Credentials live in memory, or in the 0600
apt entry (credhelpers.py); the ledger records only that they were issued and until when.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fluxagent.errors import EXIT_CONFIG, FluxError, LockHeld, ServerUnavailable, StateError
from fluxagent.statedir import state
from fluxagent.timefmt import utc_iso

if TYPE_CHECKING:  # imported where used: the helpers' local answers (list, erase) stay fast
    from fluxagent.config import Config
    from fluxagent.delivery import Engine
    from fluxagent.statedir.identity import Identity
    from fluxagent.transport import Transport
    from fluxagent.wire.receipts import Retry

Clock = Callable[[], float]
# The registry the server last issued credentials for (no secret): docker and git ask a credential
# helper about every host they talk to, and for all but the vendor's registry the answer is "not
# found" at once, from this record, without loading the identity or contacting the server.
REGISTRY_FILE = "update-registry.json"


class CredentialsError(FluxError):
    """The server refused update credentials, or issued ones too short-lived to hand out."""

    code = "credentials"


def remember_registry(state_dir: Path, registry: str) -> None:
    """Record the registry the server issued credentials for; raises StateError."""
    if known_registry(state_dir) != registry:
        state.write_json(state_dir / REGISTRY_FILE, {"v": 1, "registry": registry}, mode=0o644)


def known_registry(state_dir: Path) -> str | None:
    """Return the registry credentials were last issued for, None if unknown (never issued, unreadable)."""
    try:
        record = state.read_json(state_dir / REGISTRY_FILE)
    except StateError:
        return None
    registry = record.get("registry") if record else None
    return registry if isinstance(registry, str) and registry.strip() and " " not in registry else None


def monotonic() -> float:
    """Return seconds on the system-wide monotonic clock that also counts suspend (CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Credential:
    """Short-lived update credentials; `expires_mono` is on the `monotonic()` clock."""

    username: str
    secret: str = field(repr=False)
    registry: str
    expires_mono: float
    expires_utc: int  # for presenting only

    def remaining(self, mono_now: float) -> float:
        """Return the seconds of validity left at mono_now (negative once expired)."""
        return self.expires_mono - mono_now

    def usable(self, mono_now: float, margin: float) -> bool:
        """Return whether the credential is still valid for at least margin seconds at mono_now."""
        return self.remaining(mono_now) > margin

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, registry={self.registry!r}, expires_utc={self.expires_utc})"


def from_receipt(body: dict[str, Any], sent_mono: float, sent_wall: float) -> Credential:
    """Return the credential of a verified receipt body; expiry counts from when the request left.

    The request left before the server issued the credentials, so sent time + expires_in never
    lies after the server's own expiry.
    """
    ttl = int(body["expires_in"])
    return Credential(str(body["username"]), str(body["secret"]), str(body["registry"]),
                      sent_mono + ttl, int(sent_wall) + ttl)



def fetch(engine: Engine, mono: Clock) -> Credential:
    """Request update credentials with a fresh seq after flushing the spool; ledger the outcome.

    The spool goes first because the server accepts seq only in increasing order: a credentials
    request overtaking a spooled message would get that message refused.
    Raises ServerUnavailable (69) when the server cannot be reached, CredentialsError when refused.
    """
    from fluxagent.wire import messages
    from fluxagent.wire.receipts import Delivered, Rejected

    flushed = engine.flush()
    if flushed.retry is not None:
        raise _unavailable(flushed.retry, f"cannot reach the licensing server: {flushed.retry.reason}",
                           "check `fluxagent validate`; credentials need the server")
    sent_mono, sent_wall = mono(), engine.deps.clock()  # taken before sending: the lifetime runs from here
    issued: list[Credential] = []

    def describe(d: Delivered) -> str:
        cred = from_receipt(d.receipt_body, sent_mono, sent_wall)
        issued.append(cred)
        return f"credentials issued for {cred.registry}, valid until {utc_iso(cred.expires_utc)}"

    sealed, outcome = engine.request(messages.build_credentials(), describe=describe)
    if isinstance(outcome, Delivered):
        cred = issued[0]
        # the helpers answer "not found" for any other host from this record, without asking the server
        remember_registry(engine.config.instance.state_dir, cred.registry)
        log = engine.deps.log
        if log is not None:
            log.info("credentials.issued", seq=sealed.obj["seq"], registry=cred.registry,
                     expires_in=int(outcome.receipt_body["expires_in"]))
        return cred
    if isinstance(outcome, Rejected):
        raise CredentialsError(f"the server refused update credentials: {outcome.reason}")
    raise _unavailable(outcome, f"no update credentials: {outcome.reason}", "try again later")


def _unavailable(retry: Retry, message: str, hint: str) -> ServerUnavailable:
    """Return the error for a failed request: 69, or 78 when the cause is this machine's setup (untrusted CA)."""
    exc = ServerUnavailable(message, hint="set server.ca_bundle to the CA that issued the server's certificate"
                            if retry.config else hint)
    if retry.config:
        exc.exit_code = EXIT_CONFIG
    return exc


class CredentialCache:
    """Holds at most one credential in memory; never hands out one that expires within `margin`."""

    def __init__(self, fetcher: Callable[[], Credential], mono: Clock, margin: float) -> None:
        self._fetch, self._mono, self.margin = fetcher, mono, margin
        self._cred: Credential | None = None

    def get(self) -> Credential:
        """Return a credential valid for more than margin seconds; fetch one if needed. Raises FluxError."""
        if self._cred is not None and self._cred.usable(self._mono(), self.margin):
            return self._cred
        self._cred = None
        cred = self._fetch()
        if not cred.usable(self._mono(), self.margin):
            raise CredentialsError(
                f"the server issued credentials that expire in {max(0, int(cred.remaining(self._mono())))}s,"
                f" within updates.min_remaining ({self.margin:g}s)",
                hint="lower updates.min_remaining, or ask the vendor about the credential lifetime")
        self._cred = cred
        return cred

    def forget(self) -> None:
        """Drop the cached credential."""
        self._cred = None


def obtain(cfg: Config, *, log: Any = None, transport: Transport | None = None, mono: Clock = monotonic) -> Credential:
    """Return credentials: fetched under the instance lock, or from the running daemon; raises FluxError."""
    from fluxagent.statedir import identity
    from fluxagent.statedir.lock import instance_lock
    from fluxagent.statedir.owner import foreign_owner
    from fluxagent.updates import client

    sd = cfg.instance.state_dir
    deadline = cfg.server.request_deadline + 5  # the daemon may first flush its spool
    owner = foreign_owner(sd)
    if owner is not None:  # the service's state (root in the package): ask its daemon, never load its keys
        return _from_service(cfg, owner, deadline, mono)
    ident = identity.load(sd)
    give_up = time.monotonic() + deadline
    while True:
        try:
            with instance_lock(sd):
                return _fetch_once(cfg, ident, log, transport, mono)
        except LockHeld:
            pass
        try:  # a daemon owns seq and spool, so it makes the request
            cred = credential_of(client.ask(sd, "credentials", deadline))
        except LockHeld:
            if time.monotonic() >= give_up:
                raise
            time.sleep(0.1)  # another one-shot command (helpers run in parallel) holds the lock briefly
            continue
        if not cred.usable(mono(), cfg.updates.min_remaining):  # checked here too: never hand out an expired one
            raise CredentialsError("the daemon handed over credentials that are about to expire; try again")
        return cred


def _from_service(cfg: Config, owner: str, deadline: float, mono: Clock) -> Credential:
    """Return credentials from the daemon of the user owning the state dir; raises FluxError (69 when none runs)."""
    from fluxagent.updates import client

    sd = cfg.instance.state_dir
    try:
        cred = credential_of(client.ask(sd, "credentials", deadline))
    except client.NoDaemon:
        raise ServerUnavailable(
            f"the fluxagent service is not running: the state directory {sd} belongs to {owner}, so update"
            " credentials come from its running daemon (this command never uses the service's keys)",
            hint="start it: `systemctl start fluxagent` (see `systemctl status fluxagent`)") from None
    except client.RemoteError:
        raise
    except LockHeld as exc:
        raise ServerUnavailable(f"the fluxagent service does not answer: {exc.message}",
                                hint="see `systemctl status fluxagent` and `journalctl -u fluxagent`") from None
    if not cred.usable(mono(), cfg.updates.min_remaining):
        raise CredentialsError("the daemon handed over credentials that are about to expire; try again")
    return cred


def _fetch_once(cfg: Config, ident: Identity, log: Any, transport: Transport | None, mono: Clock) -> Credential:
    """Under the instance lock: open the state, request credentials once, close the transport."""
    from fluxagent.delivery import Deps, Engine
    from fluxagent.transport import HttpxTransport

    tr = transport if transport is not None else HttpxTransport(cfg.server)
    try:
        engine = Engine(cfg, ident, Deps(tr, time.time, log=log))
        return CredentialCache(lambda: fetch(engine, mono), mono, cfg.updates.min_remaining).get()
    finally:
        if transport is None:
            tr.close()


def credential_of(answer: dict[str, Any]) -> Credential:
    """Return the Credential in a daemon answer; raises LockHeld if it is malformed."""
    try:
        return Credential(str(answer["username"]), str(answer["secret"]), str(answer["registry"]),
                          float(answer["expires_mono"]), int(answer["expires_utc"]))
    except (KeyError, TypeError, ValueError):
        raise LockHeld("the daemon's credentials answer is malformed") from None
