"""The privacy property of clause 08: whatever the platform database holds, only the hostname,
the bound domain, the version, counts and keyed tokens can reach the sealed bytes."""

from __future__ import annotations

import base64
import json
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import fixed_world
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxagent import collect
from fluxagent.schema.policy import Policy
from fluxagent.schema.shipped import running, shipped
from fluxagent.sources.platform import open_platform
from fluxagent.statedir import identity
from fluxagent.testing import sample
from fluxagent.testing.workspace import Workspace, make_workspace
from fluxagent.wire import messages

NOW = 1_790_000_000

# Values a billing database really holds, and hostile ones: SQL, JSON, control characters, NUL,
# lone surrogates are not storable in SQLite TEXT, so they are left to the hostile-input suite.
_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
_hostile = st.sampled_from([
    "'; DROP TABLE clients; --", '{"body": {"leak": true}}', "\x00\x01\x02 nul and controls",
    "</script><script>alert(1)</script>", "Ω≈ç√∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷽", "A" * 300, "line\nbreak\rand\ttab",
])
_anything = st.one_of(_text, _hostile)
_hostnames = st.from_regex(r"[a-z][a-z0-9-]{2,12}(\.[a-z][a-z0-9-]{1,10}){1,3}", fullmatch=True)
_ips = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
_cidrs = st.builds(lambda ip, n: f"{ip}/{n}", st.ip_addresses(v=4).map(str), st.integers(8, 32))


@st.composite
def platform_data(draw: st.DrawFn) -> sample.SampleData:
    """Return a small platform whose every column is arbitrary or hostile text (or a real identifier)."""
    d = sample.SampleData(settings=[("version", draw(st.one_of(st.just("4.12.3"), _anything)))])
    for cid in range(1, draw(st.integers(1, 6)) + 1):
        d.clients.append((cid, draw(_anything), draw(_anything), draw(_anything), draw(_anything),
                          draw(st.sampled_from(["active", "suspended", "closed"]))))
        d.users.append((cid, cid, draw(_anything), draw(_anything), draw(_anything)))
        d.invoices.append((cid, cid, draw(_anything), draw(_anything), draw(_anything)))
    for sid in range(1, draw(st.integers(1, 6)) + 1):
        d.servers.append((sid, draw(st.one_of(st.none(), _hostnames, _anything)),
                          draw(st.one_of(st.none(), _ips, _anything)), draw(_anything), draw(_anything)))
    for nid in range(1, draw(st.integers(0, 4)) + 1):
        d.network_ranges.append((nid, draw(st.one_of(_cidrs, _anything)), None, draw(_anything)))
    return d


def _needles(d: sample.SampleData) -> set[str]:
    """Every platform string that may not appear in what is sent (the version may: clause 08 names it)."""
    out: set[str] = set()
    for row in (*d.clients, *d.users, *d.invoices, *d.servers, *d.network_ranges):
        out.update(v for v in row if isinstance(v, str))
    out -= {"active", "suspended", "closed"}
    return {n for n in out if _searchable(n)}


def _searchable(n: str) -> bool:
    """True when finding n in the sealed bytes would mean a leak rather than chance.

    Short strings, and strings made only of the characters of hex tokens, base64 or decimal
    numbers, occur by chance in signatures, tokens and timestamps; longer ones do not.
    """
    s = n.strip().lower()
    if len(s) < 8:
        return False
    if re.fullmatch(r"[0-9a-f]+", s):
        return len(s) >= 24
    if re.fullmatch(r"[0-9]+", s):
        return len(s) >= 14
    return not (re.fullmatch(r"[a-z0-9+/=_-]+", s) and len(s) < 12)


def _views(sealed: messages.Sealed) -> list[str]:
    env = sealed.envelope.decode()
    payload = base64.b64decode(json.loads(env)["payload"]).decode()
    return [env.lower(), payload.lower(), json.dumps(json.loads(payload), ensure_ascii=False).lower()]


def _fixed_words(sealed: messages.Sealed) -> list[str]:
    """The words such a message carries whatever the platform holds: its keys and its payload type."""
    env = json.loads(sealed.envelope)
    words = {p.rsplit(".", 1)[-1] for p in _paths(sealed.obj)} | set(env) | {"keyid", "sig", env["payloadType"]}
    return [w.lower() for w in words]


def _paths(obj: dict[str, Any], base: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in obj.items():
        out.add(base + k)
        if isinstance(v, dict):
            out |= _paths(v, f"{base}{k}.")
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("privacy") / "ws", now=NOW)


def _seal_from(ws: Workspace, db: Path, policy: Policy | None = None) -> list[messages.Sealed]:
    cfg = ws.cfg
    world = fixed_world(open_platform=lambda pc: open_platform(replace(pc, database=f"sqlite:///{db}")))
    ident = identity.load(cfg.instance.state_dir)
    built = collect.gather(cfg, ident, list(messages.KINDS), now=NOW, world=world, policy=policy)
    return collect.seal_all(built, ident, aud=cfg.server.audience, first_seq=1, now=NOW,
                            nonce=lambda n: b"\x07" * n, policy=policy)


# the property must hold whichever shipped version the operator approved (the newest one running)
APPROVED = [Policy.of(running(), v) for v in shipped().versions]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@pytest.mark.parametrize("policy", APPROVED, ids=[f"approved-{p.approved.name}" for p in APPROVED])
@given(data=platform_data())
def test_no_platform_string_but_the_version_reaches_the_sealed_bytes(
    ws: Workspace, data: sample.SampleData, policy: Policy
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = sample.write_sqlite(Path(tmp) / "p.db", data)
        sealed = _seal_from(ws, db, policy)
    assert {s.kind for s in sealed} >= {"license", "credentials"}
    version = dict(data.settings)["version"].lower()
    for s in sealed:
        views = _views(s)
        fixed = _fixed_words(s)
        for needle in _needles(data):
            n = needle.lower()
            if n in version or n in ws.cfg.instance.bound_domain or n in "billing-01.example.com":
                continue  # the three clear-text values clause 08 names
            if any(n in w for w in fixed):
                continue  # a field name or the payload type (e.g. "PLATFORM_VER"): the schema, not the data
            if n in "fb-demo-0001":
                continue  # the license id of the workspace's license file, sent by design (license.id)
            if n in ws.cfg.server.audience:
                continue  # `aud` names the license server (configuration, e.g. 127.0.0.1), not the platform
            if any(n in f.path.lower() for f in messages.REGISTRY):
                continue  # a platform string that happens to spell a field name ("BOUND_DOMAIN") is no leak
            assert not any(n in v for v in views), f"{needle!r} leaked into the {s.kind} message"
        registered = {f.path for f in policy.approved.fields if f.kind == s.kind}
        body_paths = _paths(s.obj["body"])
        assert body_paths <= registered, body_paths - registered
        assert set(s.obj) == {"v", "aud", "iid", "seq", "ts", "nonce", "body"}


def test_the_real_sample_platform_leaks_nothing(ws: Workspace) -> None:
    sealed = _seal_from(ws, Path(ws.cfg.platform.database.removeprefix("sqlite:///")))
    assert {s.kind for s in sealed} == set(messages.KINDS)
    hits = sample.scan(((s.kind, s.envelope) for s in sealed), sample.personal_data(ws.data))
    assert hits == []


def test_the_leak_check_itself_finds_a_planted_string(ws: Workspace) -> None:
    # guard against a vacuous property: a name placed where clear text goes is found
    client = (1, "Olivia Kowalski", "o.k@example.com", "+44 20 7946 0000", "1 Road", "active")
    data = sample.SampleData(settings=[("version", "4.12.3")], clients=[client])
    needles = _needles(data)
    assert "olivia kowalski" in {n.lower() for n in needles}
    planted = messages.build_heartbeat("4.12.3", "olivia-kowalski.example.com", sample_counts())
    ident = identity.load(ws.cfg.instance.state_dir)
    sealed = messages.seal(planted, signing_key=ident.signing_key, iid=ident.instance_id,
                           aud=ws.cfg.server.audience, seq=1, now=NOW, nonce=b"\x00" * 16)
    assert any("olivia-kowalski" in v for v in _views(sealed))


def sample_counts() -> Any:
    from fluxagent.facts import Counts

    return Counts(1, 1, 1)


def test_searchable_excludes_chance_matches() -> None:
    assert not _searchable("0000")
    assert not _searchable("deadbeef")
    assert not _searchable("1795360767")
    assert _searchable("Olivia Kowalski")
    assert _searchable("198.51.100.7")
    assert _searchable("x" * 12) and not _searchable("x" * 9)  # base64-alphabet strings need length


def test_registry_maps_every_field_to_one_of_the_four_clause_08_items() -> None:
    items = {f.item for f in messages.REGISTRY}  # the credentials body is empty: no field of its own
    assert items <= {messages.EVERY, messages.LICENSE, messages.HEARTBEAT, messages.DIGEST, messages.UPDATES}
