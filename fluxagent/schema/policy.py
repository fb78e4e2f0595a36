"""What may be sent now: the running registry narrowed to the operator's approved version (pure).

A field the running registry allows but the approved version does not is withheld (the message
is sent without it); a kind with a withheld *required* field is held back; narrowing needs no
approval, because only fields both versions list are allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fluxagent.schema.versions import Version
from fluxagent.wire.messages import Field, Message


@dataclass(frozen=True)
class Approved:
    """What the approval file says: the approved version, who approved it, when, and how."""

    version: Version
    by: str
    at: int
    via: str


@dataclass(frozen=True)
class Policy:
    """The running version, the approved one, and the approval record (None when injected directly)."""

    running: Version
    approved: Version
    record: Approved | None = None

    @classmethod
    def of(cls, running: Version, approved: Version | None = None) -> Policy:
        """Return the policy of running narrowed to approved (default: running itself)."""
        return cls(running, approved or running)

    @property
    def allowed(self) -> tuple[Field, ...]:
        """The fields that may be sent: listed by the running version and by the approved one."""
        return tuple(f for f in self.running.fields if self.approved.allows(f))

    @property
    def withheld(self) -> tuple[Field, ...]:
        """The running version's fields the approved version does not allow."""
        return tuple(f for f in self.running.fields if not self.approved.allows(f))

    @property
    def pending(self) -> bool:
        """True when the running version is wider than the approved one (an approval would send more)."""
        return bool(self.withheld)

    def held_back(self, kind: str) -> tuple[Field, ...]:
        """Return the withheld fields without which kind cannot be built (empty: kind may be sent)."""
        return tuple(f for f in self.withheld if f.required and f.kind in (kind, "*"))

    def allows(self, kind: str, path: str) -> bool:
        """True when body path of kind may be sent (False also for a path no version lists)."""
        return any(f.kind == kind and f.path == path for f in self.allowed)

    def apply(self, message: Message) -> tuple[Message, tuple[str, ...]]:
        """Return message without its withheld body fields, and their paths (`body.<path>`).

        Only the objects on a removed path are copied (a digest's token lists never are).
        """
        drop = sorted((f.path for f in self.withheld if f.kind == message.kind and _has(message.body, f.path)),
                      key=len, reverse=True)
        body = message.body
        for path in drop:
            body = _without(body, path.split("."))
        return (Message(message.kind, body), tuple(sorted(f"body.{p}" for p in drop))) if drop else (message, ())

    def hold_reason(self, kind: str) -> str:
        """Return the sentence saying why kind is held back (call only when held_back(kind))."""
        names = ", ".join(f"body.{f.path}" if f.kind != "*" else f.path for f in self.held_back(kind))
        return (f"{kind} is held back: the running schema {self.running.name} needs {names}, which the approved "
                f"{self.approved.name} does not allow")


def _has(body: dict[str, Any], path: str) -> bool:
    node: Any = body
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _without(obj: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Return a copy of obj without the dotted path keys; only the objects along the path are copied."""
    head, rest = keys[0], keys[1:]
    out = dict(obj)
    if not rest:
        out.pop(head, None)
    elif isinstance(out.get(head), dict):
        out[head] = _without(out[head], rest)
    return out
