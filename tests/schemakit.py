"""Registry versions passed in as values: v1 as shipped; v2 = v1 plus the delta digest fields (the
shipped v2 once it exists, the same fields as a test-only value before); two test-only v3s adding
a heartbeat field (optional, and required)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fluxagent.config import Config
from fluxagent.schema.approval import load_policy
from fluxagent.schema.policy import Policy
from fluxagent.schema.shipped import shipped
from fluxagent.schema.versions import Catalog, Version
from fluxagent.wire.messages import DIGEST, HEARTBEAT, Field

V1 = shipped().versions[0]
DELTA_FIELDS = (
    Field("digest", "base", "root", DIGEST, "root of the acknowledged set this delta applies to"),
    Field("digest", "added_servers", "tokens", DIGEST, "server tokens added since base"),
    Field("digest", "removed_servers", "tokens", DIGEST, "server tokens removed since base"),
    Field("digest", "added_networks", "tokens", DIGEST, "network tokens added since base"),
    Field("digest", "removed_networks", "tokens", DIGEST, "network tokens removed since base"),
)
V2 = shipped().find("v2") or Version(2, V1.fields + DELTA_FIELDS)
OPEN_INVOICES = Field("heartbeat", "counts.open_invoices", "uint", HEARTBEAT, "number of open invoices")
V3_OPTIONAL = Version(3, (*V2.fields, OPEN_INVOICES))
V3_REQUIRED = Version(3, (*V2.fields, replace(OPEN_INVOICES, required=True)))
UP_TO_V2 = Catalog((V1, V2))


def loader(catalog: Catalog) -> Callable[[Config], Policy]:
    """Return an approval reader that knows catalog's versions and runs its newest (the file stays real)."""
    return lambda cfg: load_policy(cfg, catalog)
