"""Plain values the sources read and the pure builders consume."""

from __future__ import annotations

from dataclasses import dataclass


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
