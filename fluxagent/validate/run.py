"""`fluxagent validate`: a checklist answering "is this instance healthy and licensed?".

Each check returns a `Check` (ok / warn / fail / skip, the reason, the fix, and the exit code a
failure stands for); cli.py prints them. Local checks come first; the network checks each have a
deadline (server.connect_timeout), so validate never hangs; the live license check goes through
the delivery engine, the path `run` uses (seq persisted, spooled, receipt verified, ledgered).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fluxagent import config as config_mod
from fluxagent.config import Config
from fluxagent.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, FluxError, oserror_exit_code
from fluxagent.kinds import KINDS
from fluxagent.license import record as license_store
from fluxagent.license.file import LicenseFile
from fluxagent.schema.policy import Policy
from fluxagent.statedir import identity
from fluxagent.statedir.identity import Identity
from fluxagent.statedir.owner import foreign_owner
from fluxagent.timefmt import utc_date
from fluxagent.transport import Transport
from fluxagent.validate.check import Check, fail, ok

if TYPE_CHECKING:
    from fluxagent.delivery import Engine

LIVE = "license server"


def check_config(path: Path) -> tuple[Check, Config | None]:
    """Return the config check and the Config when it parses."""
    try:
        cfg = config_mod.load(path)
    except FluxError as exc:
        return fail("config", exc.message, exc.hint or f"edit {path}", EXIT_CONFIG), None
    return ok("config", f"{path} parses"), cfg


def check_identity(cfg: Config) -> tuple[Check, Identity | None]:
    """Return the identity check (files present, private) and the Identity when usable."""
    try:
        ident = identity.load(cfg.instance.state_dir)
    except FluxError as exc:
        return fail("identity", exc.message, exc.hint or "run `fluxagent init`", EXIT_CONFIG), None
    return ok("identity", f"instance {ident.instance_id}; key files private"), ident


def check_service_identity(cfg: Config, owner: str) -> Check:
    """Return the identity check of the service user's state, run by root: no key is read."""
    try:
        iid = identity.inspect(cfg.instance.state_dir)
    except FluxError as exc:
        return fail("identity", exc.message, exc.hint or "run `fluxagent init`", EXIT_CONFIG)
    return ok("identity", f"instance {iid}; key files private to {owner}")


def check_service_live(cfg: Config, owner: str) -> Check:
    """Return the live check as root beside the service: its daemon makes it (it holds the keys)."""
    return check_through_daemon(cfg, absent=Check(
        LIVE, "warn", f"not checked live: the state directory belongs to {owner} and its service is not running",
        f"start it: `systemctl start fluxagent`, or run `sudo -u {owner} fluxagent validate`"))


LICENSE_FIXES = {
    "missing": "copy the license file the vendor issued to instance.license_file",
    "unreadable": "make instance.license_file readable by the user fluxagent runs as",
    "no_keys": "add the vendor's public keys to server.vendor_keys",
    "signature": "the file was altered or is not from the vendor: restore the file the vendor issued",
    "domain": "set instance.bound_domain to the licensed domain, or ask the vendor for a license for this one",
    "payload": "ask the vendor for a new license file",
    "dates": "ask the vendor for a new license file",
    "allocations": "ask the vendor for a new license file",
    "too_large": "point instance.license_file at the license file the vendor issued",
    "not_yet_valid": "check the system clock (timedatectl)",
    "expired": "install the renewed license file the vendor issued",
}


def check_license_file(cfg: Config, lic: LicenseFile) -> Check:
    """Return the license file check: signature, bound domain, dates, allocations."""
    where = str(cfg.instance.license_file)
    if lic.state == "valid":
        days = (lic.expires_at or 0) - int(time.time())
        return ok("license file", f"{lic.license_id} for {cfg.instance.bound_domain}, signature verified, "
                  f"expires {utc_date(lic.expires_at)} (in {max(days, 0) // 86400} days)")
    return fail("license file", f"{where}: {lic.reason}", LICENSE_FIXES.get(lic.code, "contact the vendor"))


def check_database(cfg: Config, lic: LicenseFile) -> Check:
    """Return the platform database check: reachable, counts come back; servers within the allocation."""
    from fluxagent.sources.platform import open_platform

    try:
        src = open_platform(cfg.platform)
        try:
            counts = src.counts()
        finally:
            src.close()
    except FluxError as exc:
        return fail("database", exc.message, exc.hint or "check platform.database and the platform queries",
                    exc.exit_code)  # the code `preview` and `run --once` give the same failure
    shown = (f"{counts.active_clients} active clients, {counts.total_users} users,"
             f" {counts.servers_total} servers")
    allowed = (lic.allocations or {}).get("servers")
    if allowed is not None and counts.servers_total > allowed:
        return Check("database", "warn", f"{shown}: more servers than the license allocates ({allowed})",
                     "ask the vendor for a larger allocation")
    return ok("database", shown)


def check_schema(cfg: Config, policy_of: Callable[[Config], Policy] | None = None) -> tuple[Check, Policy | None]:
    """Return the approved-schema check (a pending wider version is a warning) and the policy when usable."""
    from fluxagent.schema.approval import load_policy

    try:
        policy = (policy_of or load_policy)(cfg)
    except FluxError as exc:
        return fail("schema", exc.message, exc.hint or "see `fluxagent schema`", exc.exit_code), None
    run, appr = policy.running, policy.approved
    if not policy.pending:
        same = "the running registry" if run.fingerprint == appr.fingerprint else f"covers running {run.name}"
        return ok("schema", f"approved {appr.name} ({appr.fingerprint[:19]}…) {same}"), policy
    held = [k for k in KINDS if policy.held_back(k)]
    fields = ", ".join(f"{f.kind} body.{f.path}" for f in policy.withheld)
    why = f"running {run.name} is wider than approved {appr.name}: withheld {fields}"
    why += f"; held back: {', '.join(held)}" if held else ""
    return Check("schema", "warn", why, "review `fluxagent schema --diff`, then `sudo fluxagent schema --approve` "
                 "(until then the approved fields only are sent)"), policy


def check_clock(cfg: Config, now: float) -> Check:
    """Return the clock check against the last trusted server time (a live check records a fresh one)."""
    st, stored, _ = license_store.current(cfg, now)
    if st.clock_skew:
        why = "; ".join(r for r in st.reasons if "clock" in r)
        return Check("clock", "warn", why, "enable time synchronisation (timedatectl set-ntp true)")
    if stored.receipt is None:
        return Check("clock", "skip", "no trusted server time yet to compare with")
    return ok("clock", f"within {int(abs(stored.receipt.skew))} s of the license server")


def check_live(cfg: Config, ident: Identity, transport: Transport, clock: Callable[[], float]) -> Check:
    """Send one license check the way `run` does and verify the receipt; never waits past its deadline.

    While the daemon holds the state directory, it is asked to make the check (only it may seal).
    """
    from fluxagent.delivery import Deps, Engine
    from fluxagent.errors import LockHeld
    from fluxagent.statedir.lock import instance_lock

    try:
        with instance_lock(cfg.instance.state_dir):
            return license_check(Engine(cfg, ident, Deps(transport, clock)), clock)
    except LockHeld:
        return check_through_daemon(cfg)
    except FluxError as exc:
        return fail(LIVE, exc.message, exc.hint or "check the state directory", exc.exit_code)
    except OSError as exc:
        return fail(LIVE, f"cannot use the state directory {cfg.instance.state_dir}: {exc.strerror or exc}",
                    "check free space and that the state directory is writable", oserror_exit_code(exc))


def license_check(engine: Engine, clock: Callable[[], float]) -> Check:
    """Produce and send one license message through engine (its owner holds the lock); judge the answer."""
    sealed = engine.produce(["license"], clock())
    result = engine.flush()
    seqs = {s.obj["seq"] for s in sealed}
    for entry, d in result.delivered:
        if entry.seq in seqs:
            state = d.receipt_body.get("state")
            text = f"receipt verified (seq {entry.seq}): {state}, license {d.receipt_body.get('license_id')}"
            if state == "valid":
                return ok(LIVE, text)
            if state == "grace":
                return Check(LIVE, "warn", text, "renew the license with the vendor before the grace ends")
            return fail(LIVE, text, "contact the vendor about this license")
    for entry, r in result.rejected:
        if entry.seq in seqs:
            return fail(LIVE, f"the server rejected the license check: HTTP {r.status} {r.reason}",
                        "see `fluxagent log`; contact the vendor if it persists")
    why = result.retry.reason if result.retry else "the license check was not sent"
    return fail(LIVE, f"no verified answer: {why} (kept in the spool for `run`)",
                "check the network path to server.url", EXIT_UNAVAILABLE)


def check_through_daemon(cfg: Config, absent: Check | None = None) -> Check:
    """Return the live check made by the running daemon (asked over its control socket); absent when none runs."""
    from fluxagent.updates import client

    try:
        answer = client.ask(cfg.instance.state_dir, "license-check", cfg.server.request_deadline + 30)
        doc = answer["check"]
        return Check(LIVE, str(doc["level"]), f"by the running daemon: {doc['reason']}", str(doc.get("fix", "")),
                     int(doc.get("exit_code", 0)))
    except client.NoDaemon:
        return absent or Check(LIVE, "warn", "not checked live: another process holds the state directory and"
                               " no daemon answers on its control socket",
                               "run `fluxagent validate` again when it is done")
    except FluxError as exc:
        return Check(LIVE, "warn", f"not checked live: the daemon could not make the check: {exc.message}",
                     "see `fluxagent status` and the daemon's log")
    except (KeyError, TypeError, ValueError):
        return Check(LIVE, "warn", "not checked live: the daemon's answer is not understood (an older version?)",
                     "see `fluxagent status`")


def check_state(cfg: Config, now: float) -> Check:
    """Return the derived license state as the final line."""
    st, _, _ = license_store.current(cfg, now)
    text = f"{st.state}: {st.reasons[0]}"
    if st.state == "valid":
        return ok("license state", text)
    if st.state in ("offline", "grace"):
        return Check("license state", "warn", text, "restore contact with the license server / renew")
    return fail("license state", text, "see the lines above")


def run_checks(config_path: Path, *, offline: bool, transport_factory: Callable[[Config], Transport] | None = None,
               clock: Callable[[], float] = time.time) -> Iterator[Check]:
    """Yield the checklist, one Check at a time (so a person sees progress)."""
    cfg_check, cfg = check_config(config_path)
    yield cfg_check
    if cfg is None:
        return
    owner = foreign_owner(cfg.instance.state_dir)
    if owner is not None:  # root beside the service: its keys are never read, its daemon does the live check
        yield from _service_checks(cfg, owner, offline, clock)
        return
    id_check, ident = check_identity(cfg)
    yield id_check
    schema_check, policy = check_schema(cfg)
    yield schema_check
    lic = license_store.read_file_verdict(cfg, clock())
    yield check_license_file(cfg, lic)
    yield check_database(cfg, lic)
    if not offline and ident is not None and policy is None:
        yield Check("license server", "skip", "not tried: nothing is sent without an approved schema version")
    elif not offline and ident is not None:
        from fluxagent.validate.network import network_checks

        reachable = True
        for c in network_checks(cfg.server):
            reachable &= c.level != "fail"
            yield c
        if reachable:
            from fluxagent.transport import HttpxTransport

            make = transport_factory or (lambda c: HttpxTransport(c.server))
            try:
                transport = make(cfg)
            except FluxError as exc:
                yield fail("license server", exc.message, exc.hint or "check [server]", exc.exit_code)
            else:
                try:
                    yield check_live(cfg, ident, transport, clock)
                finally:
                    getattr(transport, "close", lambda: None)()
        else:
            yield Check("license server", "skip", "not tried: the server cannot be reached")
    if offline:
        yield Check("network", "skip", "not checked (--offline): no DNS, connection or live license check")
    elif ident is None:
        yield Check("network", "skip", "not checked: nothing is sent without a usable identity")
    yield check_clock(cfg, clock())
    yield check_state(cfg, clock())


def _service_checks(cfg: Config, owner: str, offline: bool, clock: Callable[[], float]) -> Iterator[Check]:
    """Yield the checklist run by another user (root) against the service user's state."""
    id_check = check_service_identity(cfg, owner)
    yield id_check
    lic = license_store.read_file_verdict(cfg, clock())
    yield check_license_file(cfg, lic)
    yield check_database(cfg, lic)
    if offline:
        yield Check("network", "skip", "not checked (--offline): no DNS, connection or live license check")
    else:
        from fluxagent.validate.network import network_checks

        reachable = True
        for c in network_checks(cfg.server):
            reachable &= c.level != "fail"
            yield c
        if reachable and id_check.level == "ok":
            yield check_service_live(cfg, owner)
    yield check_clock(cfg, clock())
    yield check_state(cfg, clock())


__all__ = ["check_config", "check_identity", "run_checks"]
