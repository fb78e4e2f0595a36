"""Plain values the sources read and the pure builders consume."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The one shape of a platform version (config, the database source and the allowlist all use
# is_version): numbers, then at most one short release tag. A tag is made of a few segments, each
# digits, a release word, or short letter runs with digits (rc2, deb12u1, g1a2b3c); a run of four
# or more letters that is no release word ("jane", "gmail", "example") makes it a name, an e-mail
# address or a host name, which a version must never carry to the wire.
VERSION_SHAPE = ("numbers like 4.12.3, optionally one short release tag after '-', '+' or '~'"
                 " (-rc2, +build.17, ~deb12u1)")
_VERSION_CORE = re.compile(r"^[0-9]{1,6}(?:\.[0-9]{1,6}){0,3}")
_TAG_SEGMENT = re.compile(r"^[0-9A-Za-z]{1,12}$")
_LETTERS = re.compile(r"[A-Za-z]+")
_RELEASE_WORDS = frozenset({
    "alpha", "beta", "rc", "pre", "preview", "dev", "build", "post", "final", "release", "snapshot",
    "nightly", "hotfix", "patch", "git", "deb", "ubuntu", "el", "fc", "lts", "stable"})
MAX_TAG = 24
MAX_TAG_SEGMENTS = 4


def is_version(v: Any) -> bool:
    """Return whether v is a platform version the wire accepts (VERSION_SHAPE)."""
    if not isinstance(v, str) or not v.isascii():
        return False
    core = _VERSION_CORE.match(v)
    if core is None:
        return False
    tag = v[core.end():]
    if not tag:
        return True
    if tag[0] not in "-+~" or len(tag) > MAX_TAG:
        return False
    segments = re.split(r"[-+~.]", tag[1:])
    return len(segments) <= MAX_TAG_SEGMENTS and all(_release_segment(s) for s in segments)


def _release_segment(s: str) -> bool:
    if not _TAG_SEGMENT.match(s):
        return False
    runs = [r.lower() for r in _LETTERS.findall(s)]
    if any(len(r) > 3 and r not in _RELEASE_WORDS for r in runs):
        return False  # a word: a name, a mail or host name part
    return s.isdigit() or any(c.isdigit() for c in s) or (len(runs) == 1 and runs[0] in _RELEASE_WORDS)


@dataclass(frozen=True)
class Counts:
    """The heartbeat's aggregate counts: each one non-negative integer."""

    active_clients: int
    total_users: int
    servers_total: int


@dataclass(frozen=True)
class HostFacts:
    """What this host contributes: its FQDN, machine-id, MACs and the networks of its interfaces."""

    fqdn: str
    machine_id: str | None
    macs: tuple[str, ...]
    networks: tuple[str, ...]
