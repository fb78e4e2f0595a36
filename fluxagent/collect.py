"""From live sources to messages: the one path both `preview` and `run` take (docs/ARCHITECTURE.md, "The data flow").

The I/O here is read-only (platform database, this host, the license file); building and
sealing are the pure functions of identifiers, messages and envelope.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fluxagent.config import Config, HostConfig, PlatformConfig
from fluxagent.errors import FluxError, SchemaHeld, SourceError
from fluxagent.facts import VERSION_SHAPE, HostFacts, is_version
from fluxagent.identifiers import TokenSet, add_machine, add_networks, add_servers, canonical_hostname, key_id
from fluxagent.license.file import LicenseFile
from fluxagent.license.record import read_license_file
from fluxagent.schema.policy import Policy
from fluxagent.sources.platform import PlatformSource, open_platform
from fluxagent.statedir import identity
from fluxagent.statedir.identity import Identity
from fluxagent.wire import messages
from fluxagent.wire.messages import Message, Sealed


@dataclass
class Built:
    """One message kind's result: the message, or the error that kept it from being built.

    withheld: the body paths left out because the approved schema version does not allow them.
    """

    kind: str
    message: Message | None = None
    error: FluxError | None = None
    skipped: Counter[str] = field(default_factory=Counter)
    withheld: tuple[str, ...] = ()
    tokens: TokenSet | None = None  # a digest's token set: stored when spooled, the next delta's base


def _host_reader(cfg: HostConfig) -> HostFacts:
    from fluxagent.sources.host import read_host

    return read_host(cfg)


@dataclass
class World:
    """The outside world `gather` reads; tests swap in plain functions."""

    open_platform: Callable[[PlatformConfig], PlatformSource] = open_platform
    read_host: Callable[[HostConfig], HostFacts] = _host_reader
    read_license: Callable[[Path], bytes | None] = read_license_file


def platform_version(cfg: Config, platform: PlatformSource) -> str:
    """Return the platform version (config first, then the database); raises SourceError if not a version."""
    raw = cfg.platform.version.strip() or platform.version()
    if not is_version(raw):
        # a database value is described, never quoted: the column may hold anything (a phone number, a mail)
        raise SourceError(
            f"platform version is not a version number: {len(raw)} characters; it is not sent"
            f" (expected {VERSION_SHAPE})",
            hint="set platform.version in the config (e.g. \"4.12.3\")",
        )
    return raw


def this_hostname(cfg: Config, host: HostFacts) -> str:
    """Return the hostname the heartbeat names (config first, then the FQDN); raises SourceError."""
    name = cfg.platform.hostname or host.fqdn
    if canonical_hostname(name) is None:
        raise SourceError(f"this host's name {name[:80]!r} is not a valid DNS name",
                          hint="set platform.hostname in the config")
    return name


def tokens_for(platform: PlatformSource, host: HostFacts, key: bytes) -> TokenSet:
    """Return the finished token set of the inventory plus this host."""
    tokens = TokenSet()
    add_servers(tokens, platform.iter_servers(), key)
    add_machine(tokens, host.machine_id, host.macs, key)
    add_networks(tokens, platform.iter_networks(), key)
    add_networks(tokens, host.networks, key)
    return tokens.finish()


def license_view(cfg: Config, world: World, now: float) -> LicenseFile:
    """Return the local license file verdict."""
    from fluxagent.license.record import read_file_verdict

    return read_file_verdict(cfg, now, world.read_license)


def gather(
    cfg: Config,
    ident: Identity,
    kinds: Sequence[str],
    *,
    now: float,
    last_acked_root: str | None = None,
    license_state: str | None = None,
    world: World | None = None,
    base: Callable[[], TokenSet | None] | None = None,
    policy: Policy | None = None,
) -> list[Built]:
    """Build the messages of kinds from live sources; a failing kind carries its error, the rest go on.

    base: reads the token set of last_acked_root, for a digest delta (None: no delta, full or
    unchanged); called only after the inventory is tokenized and its root changed, so the two sets
    are not built up together.
    policy: what the operator approved; fields it withholds are left out (a digest delta is not built
    unless `base` is approved), and a kind it holds back carries a SchemaHeld error without being
    built (None: the running registry, unnarrowed).
    """
    world = world or World()
    results = {k: Built(k) for k in kinds}
    if policy is not None:
        held = [k for k in kinds if policy.held_back(k)]
        for k in held:
            results[k].error = SchemaHeld(policy.hold_reason(k), hint="see `fluxagent schema --diff`; "
                                          "`sudo fluxagent schema --approve` lets it be sent")
        kinds = [k for k in kinds if k not in held]
        if not policy.allows("digest", "base"):
            base = None  # no delta unless approved: the digest goes full, or unchanged
    platform: PlatformSource | None = None
    host: HostFacts | None = None
    try:
        if "heartbeat" in kinds or "digest" in kinds:
            try:
                host = world.read_host(cfg.host)
                platform = world.open_platform(cfg.platform)
            except FluxError as exc:  # this host or the platform failed: those two kinds wait, the rest go on
                for k in ("heartbeat", "digest"):
                    if k in results:
                        results[k].error = exc
        if "license" in kinds:
            lic = license_view(cfg, world, now)
            state = license_state or lic.state
            lid = lic.license_id if lic.state in ("valid", "expired") else None
            results["license"].message = messages.build_license(
                cfg.instance.bound_domain, lid, state, ident.public_key)
        if platform is not None and host is not None:
            if "heartbeat" in kinds:
                _guard(results["heartbeat"], lambda: messages.build_heartbeat(
                    platform_version(cfg, platform), this_hostname(cfg, host), platform.counts()))
            if "digest" in kinds:
                def digest() -> Message:
                    toks = tokens_for(platform, host, ident.digest_key)
                    results["digest"].skipped.update(toks.skipped)
                    results["digest"].tokens = toks
                    return messages.build_digest(toks, key_id(ident.digest_key), last_acked_root, base=base)
                _guard(results["digest"], digest)
        if "credentials" in kinds:
            results["credentials"].message = messages.build_credentials()
    finally:
        if platform is not None:
            platform.close()
    if policy is not None:
        for b in results.values():
            if b.message is not None:
                b.message, b.withheld = policy.apply(b.message)
    return list(results.values())


def _guard(built: Built, fn: Callable[[], Message]) -> None:
    try:
        built.message = fn()
    except FluxError as exc:
        built.error = exc


def seal_all(
    built: Sequence[Built], ident: Identity, *, aud: str, first_seq: int, now: int, nonce: Callable[[int], bytes],
    policy: Policy | None = None,
) -> list[Sealed]:
    """Seal every built message with consecutive seq numbers from first_seq; raises AllowlistError.

    policy: the allowlist check takes only the fields the approved version allows (None: the registry).
    """
    fields = policy.allowed if policy is not None else None
    out: list[Sealed] = []
    seq = first_seq
    for b in built:
        if b.message is None:
            continue
        out.append(messages.seal(b.message, signing_key=ident.signing_key, iid=ident.instance_id,
                                 aud=aud, seq=seq, now=now, nonce=nonce(16), fields=fields))
        seq += 1
    return out


def last_seq(state_dir: Path) -> int:
    """Return the last seq used (0 if none); read-only; raises StateError if the file is corrupt."""
    from fluxagent.statedir.state import Seq

    return Seq(state_dir).last()


@dataclass
class Preview:
    """What `preview` shows: sealed messages, kinds that failed (or are held back), withheld fields."""

    sealed: list[Sealed]
    failures: list[tuple[str, FluxError]]
    withheld: dict[str, tuple[str, ...]]
    policy: Policy


def preview(cfg: Config, kinds: list[str], *, world: World | None = None, now: float | None = None,
            policy: Policy | None = None) -> Preview:
    """Build and seal the kinds from live sources without writing anything; raises ConfigError, StateError.

    policy: default the approval beside cfg's file (a missing or bad one raises ConfigError, 78).
    """
    from fluxagent.schema.approval import load_policy

    ident = identity.load(cfg.instance.state_dir)  # a missing identity first: `init` writes both
    pol = policy or load_policy(cfg)
    t = time.time() if now is None else now
    built = gather(cfg, ident, kinds, now=t, world=world, policy=pol)
    sealed = seal_all(built, ident, aud=cfg.server.audience, first_seq=last_seq(cfg.instance.state_dir) + 1,
                      now=int(t), nonce=os.urandom, policy=pol)
    failures = [(b.kind, b.error) for b in built if b.error is not None]
    return Preview(sealed, failures, {b.kind: b.withheld for b in built if b.withheld}, pol)


def build_preview(
    cfg: Config, kinds: list[str], *, world: World | None = None, now: float | None = None,
    policy: Policy | None = None,
) -> tuple[list[Sealed], list[tuple[str, FluxError]]]:
    """Return `preview`'s sealed messages and failures (see `preview`)."""
    p = preview(cfg, kinds, world=world, now=now, policy=policy)
    return p.sealed, p.failures
