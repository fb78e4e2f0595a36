"""A small ctypes binding to libseccomp (libseccomp.so.2): enough to load the filters systemd builds.

Standard library only, so it works in any Python (a venv, Debian's python3) without python3-seccomp.
Filters are plain values (`Filter`, `Rule`); `load` is the only function that touches the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000
CMP_EQ = 4
CMP_GE = 5
CMP_MASKED_EQ = 7


def act_errno(number: int) -> int:
    """Return the action "fail the call with this errno" (SCMP_ACT_ERRNO)."""
    return 0x00050000 | (number & 0xFFFF)


@dataclass(frozen=True)
class Rule:
    """Take `action` for `syscall` when every (arg index, op, datum_a, datum_b) condition holds."""

    syscall: str
    action: int
    conditions: tuple[tuple[int, int, int, int], ...] = ()


@dataclass(frozen=True)
class Filter:
    """One seccomp filter: a default action and its rules (the kernel applies the strictest of all filters)."""

    default: int
    rules: tuple[Rule, ...]


class _ArgCmp(ctypes.Structure):
    _fields_ = (("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64))


class Libseccomp:
    """The loaded library; raises OSError when libseccomp.so.2 is not installed."""

    def __init__(self, name: str | None = None) -> None:
        self.lib = ctypes.CDLL(name or ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        self.lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        self.lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        self.lib.seccomp_rule_add_array.restype = ctypes.c_int
        self.lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                                    ctypes.c_uint, ctypes.POINTER(_ArgCmp))
        self.lib.seccomp_load.restype = ctypes.c_int
        self.lib.seccomp_load.argtypes = (ctypes.c_void_p,)
        self.lib.seccomp_release.restype = None
        self.lib.seccomp_release.argtypes = (ctypes.c_void_p,)

    def resolve(self, name: str) -> int | None:
        """Return the native syscall number of name, or None when this architecture has no such call."""
        nr = int(self.lib.seccomp_syscall_resolve_name(name.encode()))
        return nr if nr >= 0 else None  # negative: unknown here, or a pseudo-number for another ABI

    def load(self, flt: Filter) -> int:
        """Install flt in this process (and, across execve, its program); return the rules added; raises OSError."""
        ctx = self.lib.seccomp_init(flt.default)
        if not ctx:
            raise OSError(ctypes.get_errno() or 22, "seccomp_init failed")
        added = 0
        try:
            for rule in flt.rules:
                nr = self.resolve(rule.syscall)
                if nr is None:
                    continue
                conds = (_ArgCmp * max(1, len(rule.conditions)))(*(_ArgCmp(*c) for c in rule.conditions))
                rc = self.lib.seccomp_rule_add_array(ctx, rule.action, nr, len(rule.conditions), conds)
                if rc < 0:
                    raise OSError(-rc, f"seccomp_rule_add({rule.syscall}): {os.strerror(-rc)}")
                added += 1
            rc = self.lib.seccomp_load(ctx)  # also sets no_new_privs, as systemd does for User= services
            if rc < 0:
                raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
        finally:
            self.lib.seccomp_release(ctx)
        return added
