"""This host via psutil: FQDN, machine-id, MACs and the networks of its interfaces."""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from pathlib import Path

from fluxagent.config import HostConfig
from fluxagent.errors import SourceError
from fluxagent.facts import HostFacts

MACHINE_ID = Path("/etc/machine-id")


def fqdn() -> str:
    """Return this host's fully qualified name, falling back to the plain host name."""
    name = socket.gethostname()
    try:
        full = socket.getfqdn(name)
    except OSError:
        full = name
    # getfqdn may return "localhost" names when /etc/hosts maps the name to loopback
    return full if full and not full.startswith("localhost") else name


def read_machine_id(path: Path = MACHINE_ID) -> str | None:
    """Return the machine-id text, or None when absent or unreadable."""
    try:
        return path.read_text(encoding="ascii", errors="replace").strip() or None
    except OSError:
        return None


def interface_facts(cfg: HostConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return (MACs, CIDR networks) of this host's interfaces, minus the excluded ones; raises SourceError."""
    import psutil  # imported here: only the digest needs it, `--help` should not pay for it

    macs: list[str] = []
    nets: list[str] = []
    try:
        interfaces = psutil.net_if_addrs()
    except (OSError, psutil.Error) as exc:  # e.g. netlink refused by a sandbox
        raise SourceError(f"cannot list this host's network interfaces: {exc}",
                          hint="check the service's RestrictAddressFamilies (psutil needs AF_NETLINK)") from exc
    for name, addrs in interfaces.items():
        if any(fnmatch.fnmatchcase(name, pat) for pat in cfg.exclude_interfaces):
            continue
        for a in addrs:
            if a.family == psutil.AF_LINK:
                macs.append(a.address)
            elif a.family in (socket.AF_INET, socket.AF_INET6) and a.netmask:
                net = _network(a.address, a.netmask)
                if net:
                    nets.append(net)
    return tuple(macs), tuple(nets)


def _network(address: str, netmask: str) -> str | None:
    addr = address.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback or ip.is_link_local:
            return None  # says nothing about the operator's network
        mask = netmask.split("/")[-1]
        net = ipaddress.ip_network(f"{addr}/{mask}", strict=False)
    except ValueError:
        return None
    return str(net)


def read_host(cfg: HostConfig, machine_id_path: Path = MACHINE_ID) -> HostFacts:
    """Return what this host contributes to the heartbeat and digest."""
    macs, nets = interface_facts(cfg)
    if not cfg.include_interfaces:
        nets = ()  # MACs still serve as the machine-id fallback; they leave only as a token
    return HostFacts(fqdn=fqdn(), machine_id=read_machine_id(machine_id_path), macs=macs, networks=nets)
