"""The allowlist registry and `seal`: only registered key paths with valid values can be sealed."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxagent.errors import AllowlistError
from fluxagent.facts import Counts
from fluxagent.identifiers import TokenSet, add_networks, add_servers, key_id
from fluxagent.wire import envelope, messages
from fluxagent.wire.messages import Message, seal

KEY = nacl.signing.SigningKey(b"\x33" * 32)
PUB = bytes(KEY.verify_key)
IID = "0b7a9c1e-4d2f-4a6b-8c3d-9e0f1a2b3c4d"
DIGEST_KEY = b"\x44" * 32
T1, T2 = "0" * 31 + "1", "0" * 31 + "2"


def _tokens() -> TokenSet:
    ts = TokenSet()
    add_servers(ts, [("node1.example.net", None), (None, "192.0.2.1")], DIGEST_KEY)
    add_networks(ts, ["192.0.2.0/24"], DIGEST_KEY)
    return ts.finish()


def _messages() -> dict[str, Message]:
    return {
        "license": messages.build_license("billing.example.com", "FB-0001", "valid", PUB),
        "heartbeat": messages.build_heartbeat("4.12.3", "billing-01.example.com", Counts(10, 20, 3)),
        "digest": messages.build_digest(_tokens(), key_id(DIGEST_KEY), None),
        "credentials": messages.build_credentials(),
    }


def _seal(msg: Message, **over: Any) -> messages.Sealed:
    args: dict[str, Any] = {"signing_key": KEY, "iid": IID, "aud": "licensing.example.net", "seq": 5,
                            "now": 1_760_000_000, "nonce": b"\x01" * 16}
    args.update(over)
    return seal(msg, **args)


def _paths(obj: dict[str, Any], base: str = "") -> set[str]:
    out = set()
    for k, v in obj.items():
        out.add(base + k)
        if isinstance(v, dict):
            out |= _paths(v, f"{base}{k}.")
    return out


def _registered(kind: str) -> set[str]:
    return {f.path if f.kind == "*" else f"body.{f.path}" for f in messages.REGISTRY if f.kind in ("*", kind)}


@pytest.mark.parametrize("kind", messages.KINDS)
def test_every_builder_output_seals_and_uses_only_registered_paths(kind):
    sealed = _seal(_messages()[kind])
    assert sealed.kind == kind
    assert sealed.endpoint == messages.ENDPOINTS[kind]
    assert _paths(sealed.obj) <= _registered(kind)
    opened = envelope.open_envelope(sealed.envelope, [PUB], envelope.payload_type(kind))
    assert opened.payload == sealed.payload
    assert opened.obj == sealed.obj


def test_every_registered_path_is_produced_by_some_builder():
    produced = set()
    for kind, msg in _messages().items():
        produced |= {(kind, p) for p in _paths(_seal(msg).obj)}
    base, now = TokenSet(), TokenSet()
    add_servers(base, [(f"n{i}.example.net", None) for i in range(20)], DIGEST_KEY)
    add_servers(now, [(f"n{i}.example.net", None) for i in range(1, 21)], DIGEST_KEY)
    delta = messages.build_digest(now.finish(), key_id(DIGEST_KEY), base.finish().root, base=base)
    produced |= {("digest", p) for p in _paths(_seal(delta).obj)}
    for f in messages.REGISTRY:
        if f.kind == "*":
            assert all((k, f.path) in produced for k in messages.KINDS), f.path
        else:
            assert (f.kind, f"body.{f.path}") in produced, f.path


def test_registry_has_unique_paths_known_types_and_clause_08_items():
    keys = [(f.kind, f.path) for f in messages.REGISTRY]
    assert len(keys) == len(set(keys))
    items = {messages.LICENSE, messages.HEARTBEAT, messages.DIGEST, messages.UPDATES, messages.EVERY}
    for f in messages.REGISTRY:
        assert f.type in messages.TYPES
        assert f.item in items
        assert f.kind in (*messages.KINDS, "*")


def test_payload_is_compact_sorted_json_with_the_envelope_fields():
    sealed = _seal(_messages()["heartbeat"])
    assert sealed.payload == envelope.canonical_json(sealed.obj)
    obj = json.loads(sealed.payload)
    assert obj["v"] == 1 and obj["seq"] == 5 and obj["ts"] == 1_760_000_000
    assert obj["iid"] == IID and obj["aud"] == "licensing.example.net"
    assert base64.urlsafe_b64decode(obj["nonce"] + "==") == b"\x01" * 16
    assert obj["body"]["counts"] == {"active_clients": 10, "total_users": 20, "servers_total": 3}


def test_digest_without_change_carries_no_lists_and_forced_full_does():
    toks = _tokens()
    full = messages.build_digest(toks, key_id(DIGEST_KEY), None)
    assert full.body["full"] is True
    assert len(full.body["servers"]) == 2 and len(full.body["networks"]) == 1
    same = messages.build_digest(toks, key_id(DIGEST_KEY), full.body["root"])
    assert same.body == {"key_id": key_id(DIGEST_KEY), "root": full.body["root"], "full": False}
    forced = messages.build_digest(toks, key_id(DIGEST_KEY), full.body["root"], force_full=True)
    assert forced.body == full.body
    _seal(same)


def _with(msg: Message, path: str, value: Any) -> Message:
    body = copy.deepcopy(msg.body)
    *parents, leaf = path.split(".")
    node = body
    for p in parents:
        node = node[p]
    node[leaf] = value
    return Message(msg.kind, body)


@pytest.mark.parametrize(
    "kind, path",
    [("heartbeat", "client_names"), ("heartbeat", "counts.invoices_total"), ("license", "license.owner"),
     ("license", "contact_email"), ("digest", "hostnames"), ("credentials", "username"),
     ("heartbeat", "bound_domain"), ("digest", "counts")],
)
def test_an_extra_body_field_anywhere_is_refused_naming_its_path(kind, path):
    msg = _with(_messages()[kind], path, 1)
    with pytest.raises(AllowlistError) as info:
        _seal(msg)
    assert f"body.{path}: not in the allowlist" in str(info.value)


def test_an_extra_top_level_payload_field_is_refused():
    sealed = _seal(_messages()["heartbeat"])
    payload = dict(sealed.obj, client="Alice Smith")
    with pytest.raises(AllowlistError, match="client: not in the allowlist"):
        messages.check_allowlist("heartbeat", payload)


def test_a_field_of_another_kind_is_refused():
    msg = Message("heartbeat", {**_messages()["heartbeat"].body, "key_id": key_id(DIGEST_KEY)})
    with pytest.raises(AllowlistError, match="body.key_id"):
        _seal(msg)


@pytest.mark.parametrize(
    "kind, path, value",
    [
        ("heartbeat", "counts.active_clients", -1),
        ("heartbeat", "counts.active_clients", True),
        ("heartbeat", "counts.total_users", 3.0),
        ("heartbeat", "counts.total_users", "12"),
        ("heartbeat", "counts.servers_total", None),
        ("heartbeat", "counts.servers_total", 2**60),
        ("heartbeat", "counts", [1, 2, 3]),
        ("heartbeat", "hostname", "Alice Smith's server"),
        ("heartbeat", "hostname", "alice@example.com"),
        ("heartbeat", "platform_version", "4.12.3 (customer: ACME Corp)"),
        ("digest", "servers", ["alice@example.com"]),
        ("digest", "servers", [T2, T1]),
        ("digest", "servers", [T1, T1]),
        ("digest", "servers", ["AB" * 16]),
        ("digest", "networks", T1),
        ("digest", "networks", [T1 + "00"]),
        ("digest", "full", 1),
        ("digest", "key_id", "not hex at all!"),
        ("digest", "root", "ab" * 16),
        ("license", "license.state", "bought by Alice"),
        ("license", "license.id", "FB 0001 for Alice Smith"),
        ("license", "public_key", "not base64"),
        ("license", "public_key", base64.b64encode(b"\x00" * 31).decode()),
        ("license", "bound_domain", "billing example com"),
        ("license", "license", "valid"),
    ],
)
def test_wrongly_typed_values_are_refused(kind, path, value):
    msg = _with(_messages()[kind], path, value)
    with pytest.raises(AllowlistError) as info:
        _seal(msg)
    assert f"body.{path}: not a valid" in str(info.value)


@pytest.mark.parametrize(
    "over, path",
    [({"iid": "Alice Smith"}, "iid"), ({"aud": "https://x.example/path"}, "aud"), ({"seq": -1}, "seq"),
     ({"seq": True}, "seq"), ({"now": 1.5}, "ts"), ({"nonce": b"\x01" * 8}, "nonce")],
)
def test_bad_envelope_fields_are_refused(over, path):
    with pytest.raises(AllowlistError, match=f"{path}: not a valid"):
        _seal(_messages()["heartbeat"], **over)


def test_unknown_kind_is_refused():
    with pytest.raises(AllowlistError):
        _seal(Message("telemetry", {}))


def test_the_registry_table_lists_every_field():
    table = messages.registry_table()
    for f in messages.REGISTRY:
        path = f.path if f.kind == "*" else f"body.{f.path}"
        assert f"`{path}`" in table


# ---- property: whatever a body holds, seal either refuses or emits only registered paths ----

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**54) | st.text(max_size=20)
    | st.sampled_from([T1, [T1, T2], "billing.example.com", "4.12.3", "valid"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["counts", "active_clients", "license", "id", "state", "servers", "x", "hostname"]),
        inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(messages.KINDS), extra=st.dictionaries(st.text(max_size=12), _json, max_size=4),
       base=st.booleans())
def test_seal_output_never_holds_an_unregistered_path(kind, extra, base):
    body = {**(_messages()[kind].body if base else {}), **extra}
    try:
        sealed = _seal(Message(kind, body))
    except AllowlistError:
        return
    assert _paths(sealed.obj) <= _registered(kind)
