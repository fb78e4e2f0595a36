"""Canonical forms and keyed tokens (docs/PROTOCOL.md §2): equal identifiers hash equal, different keys never link."""

from __future__ import annotations

import hashlib
import ipaddress
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fluxagent.identifiers import (
    TokenSet,
    add_machine,
    add_networks,
    add_servers,
    canonical_hostname,
    canonical_ip,
    canonical_mac,
    canonical_machine_id,
    canonical_network,
    key_id,
    token,
)

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _hex(tokens) -> list[str]:
    return [t.hex() for t in tokens]


def _servers(rows, key=K1) -> TokenSet:
    ts = TokenSet()
    add_servers(ts, rows, key)
    return ts.finish()


def _networks(cidrs, key=K1) -> TokenSet:
    ts = TokenSet()
    add_networks(ts, cidrs, key)
    return ts.finish()


# ---- equivalences ----


@pytest.mark.parametrize(
    "a, b",
    [
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:c000:0201", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("FE80:0:0:0:0:0:0:1", "fe80::1"),
        ("2001:db8::1", "2001:0db8:0000:0000:0000:0000:0000:0001"),
        ("  192.0.2.1\n", "192.0.2.1"),
        ("[2001:db8::1]", "2001:db8::1"),
    ],
)
def test_equivalent_ip_notations_canonicalize_equal(a, b):
    assert canonical_ip(a) is not None
    assert canonical_ip(a) == canonical_ip(b)


def test_ipv4_mapped_address_hashes_as_plain_ipv4():
    assert canonical_ip("::ffff:192.0.2.1") == bytes([192, 0, 2, 1])
    assert _hex(_servers([(None, "::ffff:192.0.2.1")]).servers) == _hex(_servers([(None, "192.0.2.1")]).servers)


@pytest.mark.parametrize(
    "a, b",
    [
        ("192.0.2.77/24", "192.0.2.0/24"),
        ("::ffff:192.0.2.0/120", "192.0.2.0/24"),
        ("::ffff:192.0.2.9/128", "192.0.2.9/32"),
        ("192.0.2.9", "192.0.2.9/32"),
        ("2001:db8::dead:beef/32", "2001:db8::/32"),
        ("2001:DB8::/48", "2001:db8:0::/48"),
        ("10.0.0.0/255.0.0.0", "10.0.0.0/8"),
        ("10.1.2.3/0.0.255.255", "10.1.0.0/16"),
        ("fe80::%eth0/64", "fe80::/64"),
        (" 198.51.100.0/24 ", "198.51.100.0/24"),
    ],
)
def test_equivalent_network_notations_canonicalize_equal(a, b):
    assert canonical_network(a) is not None
    assert canonical_network(a) == canonical_network(b)


def test_mapped_network_shorter_than_96_stays_ipv6():
    assert canonical_network("::ffff:0:0/95") != canonical_network("0.0.0.0/0")
    assert len(canonical_network("::ffff:0:0/95") or b"") == 17


def test_network_and_address_of_same_value_give_different_tokens():
    addr = _hex(_servers([(None, "192.0.2.1")]).servers)
    net = _hex(_networks(["192.0.2.1/32"]).networks)
    assert addr != net


@pytest.mark.parametrize(
    "a, b",
    [
        ("Bücher.Example.", "xn--bcher-kva.example"),
        ("BILLING.Example.COM.", "billing.example.com"),
        ("  node1.example.net  ", "node1.example.net"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("ＥＸＡＭＰＬＥ.com", "example.com"),
    ],
)
def test_equivalent_hostnames_canonicalize_equal(a, b):
    assert canonical_hostname(a) is not None
    assert canonical_hostname(a) == canonical_hostname(b)


def test_hostnames_use_idna_2008_not_the_stdlib_idna_2003_codec():
    # IDNA 2003 maps ß to "ss"; IDNA 2008 keeps it as its own code point
    assert "faß.example".encode("idna") == b"fass.example"
    assert canonical_hostname("faß.example") == "xn--fa-hia.example"


@pytest.mark.parametrize(
    "bad",
    ["", " ", ".", "a..b.example", "-lead.example", "trail-.example", "a" * 64 + ".example",
     ".".join(["abcdefghi"] * 26), "has space.example", "semi;colon.example", "xn--zz.example",
     "null\x00.example", "quote'.example", "☃\x00.example"],
)
def test_invalid_hostnames_are_refused(bad):
    assert canonical_hostname(bad) is None


@pytest.mark.parametrize("notation", ["00:1A:2B:3C:4D:5E", "00-1a-2b-3c-4d-5e", "001a.2b3c.4d5e",
                                      "001A2B3C4D5E", "0:1a:2b:3c:4d:5e"])
def test_mac_notations_canonicalize_equal(notation):
    assert canonical_mac(notation) == bytes.fromhex("001a2b3c4d5e")


@pytest.mark.parametrize("bad", ["", "00:1a:2b:3c:4d", "00:1a:2b:3c:4d:5e:6f", "zz:1a:2b:3c:4d:5e",
                                 "001a2b3c4d5", "001a.2b3c.4d5e.6f70"])
def test_invalid_macs_are_refused(bad):
    assert canonical_mac(bad) is None


def test_machine_id_needs_32_hex_digits_and_not_all_zero():
    expected = bytes.fromhex("5f2c0e1d9a8b4c7d8e6f1a2b3c4d5e6f")
    assert canonical_machine_id("5F2C0E1D9A8B4C7D8E6F1A2B3C4D5E6F\n") == expected
    for bad in ("", "0" * 32, "5f2c0e1d", "g" * 32, "5f2c0e1d9a8b4c7d8e6f1a2b3c4d5e6f00"):
        assert canonical_machine_id(bad) is None


# ---- skipping and counting ----


def test_invalid_values_are_skipped_and_counted_never_tokenized():
    ts = TokenSet()
    add_servers(ts, [("ok.example", None), ("bad host!", "192.0.2.1"), ("bad host!", None), (None, "999.1.1.1"),
                     (None, None), ("", "  "), (42, b"\x01")], K1)
    add_networks(ts, ["192.0.2.0/24", "192.0.2.0/33", "not a cidr", None, 7, "\x00"], K1)
    ts.finish()
    assert len(ts.servers) == 2  # ok.example, and bad host! falls back to its IP
    assert len(ts.networks) == 1
    assert ts.skipped == {
        "server_hostname_invalid": 2,
        "server_ip_invalid": 1,
        "server_without_identifier": 3,
        "network_invalid": 5,
    }


def test_hostile_text_never_raises_while_tokenizing():
    hostile = ["1.2.3.4\x00", "::1\x00", "192.0.2.0\x00/24", "\ud800", "'; DROP TABLE servers; --",
               "A" * 100_000, "%", "::ffff:1.2.3.4%", "/", "1.2.3.4/"]
    ts = TokenSet()
    add_servers(ts, [(h, h) for h in hostile], K1)
    add_networks(ts, hostile, K1)
    assert sum(ts.skipped.values()) > 0


def test_host_token_uses_machine_id_then_lowest_non_zero_mac():
    def one(machine_id, macs):
        ts = TokenSet()
        add_machine(ts, machine_id, macs, K1)
        return _hex(ts.servers), ts.skipped

    mid = "5f2c0e1d9a8b4c7d8e6f1a2b3c4d5e6f"
    assert one(mid, ["52:54:00:00:00:01"])[0] == [token("machine", bytes.fromhex(mid), K1).hex()]
    assert one(None, ["52:54:00:00:00:09", "00:00:00:00:00:00", "52:54:00:00:00:02"])[0] == [
        token("mac", bytes.fromhex("525400000002"), K1).hex()]
    assert one("garbage", ["52:54:00:00:00:02"])[0] == one(None, ["52:54:00:00:00:02"])[0]
    tokens, skipped = one(None, ["00:00:00:00:00:00"])
    assert tokens == [] and skipped == {"host_without_machine_id": 1}


def test_duplicates_after_canonicalization_give_one_token():
    ts = _servers([("Node1.Example.", None), ("node1.example", "192.0.2.1"), (None, "::ffff:192.0.2.1"),
                   (None, "192.0.2.1")])
    assert len(ts.servers) == 2
    nets = _networks(["192.0.2.0/24", "192.0.2.200/24", "::ffff:192.0.2.0/120", "10.0.0.0/8"])
    assert len(nets.networks) == 2


# ---- tokens, key id and root ----


def test_token_is_the_documented_keyed_blake2b():
    expected = hashlib.blake2b(b"billing.example.com", key=K1, person=b"fa1-host", digest_size=16).hexdigest()
    assert _hex(_servers([("Billing.Example.COM.", None)]).servers) == [expected]
    net = hashlib.blake2b(bytes([192, 0, 2, 0, 24]), key=K1, person=b"fa1-net", digest_size=16).hexdigest()
    assert _hex(_networks(["192.0.2.0/24"]).networks) == [net]


def test_tokens_are_32_hex_digits():
    ts = _servers([("a.example", None), (None, "2001:db8::1")])
    assert all(HEX32.match(t) for t in _hex(ts.servers))


def test_kinds_are_domain_separated():
    same = b"\x01" * 16
    assert len({token(kind, same, K1) for kind in ("host", "ip", "net", "mac", "machine")}) == 5


@settings(max_examples=100, deadline=None)
@given(st.lists(st.ip_addresses().map(str), min_size=1, max_size=20, unique=True))
def test_same_identifiers_under_two_instances_keys_give_unrelated_tokens(ips):
    a = set(_hex(_servers([(None, ip) for ip in ips], K1).servers))
    b = set(_hex(_servers([(None, ip) for ip in ips], K2).servers))
    assert a.isdisjoint(b)


def test_key_id_is_16_hex_differs_per_key_and_does_not_reveal_the_key():
    ids = {key_id(bytes([i]) * 32) for i in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[0-9a-f]{16}", k) for k in ids)
    assert key_id(K1) not in K1.hex()
    assert key_id(K1) == key_id(bytes(K1))


_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
_hostnames = st.lists(_label, min_size=2, max_size=4).map(".".join)


@settings(max_examples=150, deadline=None)
@given(names=st.lists(_hostnames, min_size=1, max_size=15, unique=True), data=st.data())
def test_root_ignores_order_and_duplicates_but_changes_with_any_token(names, data):
    base = _servers([(n, None) for n in names]).root
    shuffled = data.draw(st.permutations(names + data.draw(st.lists(st.sampled_from(names), max_size=5))))
    assert _servers([(n.upper() + ".", None) for n in shuffled]).root == base

    i = data.draw(st.integers(0, len(names) - 1))
    other = data.draw(_hostnames.filter(lambda h: h not in names))
    changed = [*names[:i], other, *names[i + 1:]]
    assert _servers([(n, None) for n in changed]).root != base
    assert _servers([(n, None) for n in names[:i] + names[i + 1:]]).root != base


def test_root_tells_servers_from_networks():
    tok = token("host", b"x", K1)
    a, b = TokenSet(), TokenSet()
    a.servers.append(tok)
    b.networks.append(tok)
    assert a.finish().root != b.finish().root
    assert TokenSet().finish().root != a.root


# ---- the fast paths agree with the `ipaddress` reference ----


def _ref_ip(text: str) -> bytes | None:
    """The reference: `ipaddress`, after the documented normalizations (strip, IPv6 zone, brackets)."""
    s = text.strip()
    if ":" in s:
        s = s.split("%", 1)[0]
        if s.startswith("[") and s.endswith("]"):
            s = s[1:-1]
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.packed
    return ip.packed


def _ref_net(text: str) -> bytes | None:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
        net = ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    elif isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and (
        net.network_address.packed[:12] == b"\x00" * 10 + b"\xff\xff"
    ):
        net = ipaddress.IPv4Network((net.network_address.packed[12:], net.prefixlen - 96))
    return net.network_address.packed + bytes([net.prefixlen])


@st.composite
def _address_texts(draw: st.DrawFn) -> str:
    ip = draw(st.ip_addresses())
    if isinstance(ip, ipaddress.IPv4Address):
        forms = [str(ip), f"::ffff:{ip}", f"::ffff:{int(ip) >> 16:x}:{int(ip) & 0xFFFF:x}", f" {ip}\t"]
    else:
        forms = [str(ip), ip.exploded, ip.exploded.upper(), f"{ip}%eth0", f"[{ip}]", f"{ip}%25"]
    return draw(st.sampled_from(forms))


@st.composite
def _network_texts(draw: st.DrawFn) -> str:
    ip = draw(st.ip_addresses())
    bits = 32 if isinstance(ip, ipaddress.IPv4Address) else 128
    prefix = draw(st.integers(0, bits))
    forms = [f"{ip}/{prefix}", f"{ip}", f"{ip}/0{prefix}"]
    if bits == 32:
        forms += [f"::ffff:{ip}/{96 + prefix}", f"{ip}/{ipaddress.IPv4Network((0, prefix)).netmask}"]
    else:
        forms += [f"{ip.exploded}/{prefix}", f"{ip}%eth0/{prefix}"]
    return draw(st.sampled_from(forms))


_garbage_alphabet = st.sampled_from([*list("0123456789abcdefABCDEF:./%[] \t\x00-+xX"), "٣", "０", "�"])
_garbage = st.one_of(st.text(_garbage_alphabet, max_size=45), st.text(max_size=20))


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(_address_texts(), _garbage))
def test_canonical_ip_agrees_with_ipaddress(text):
    assert canonical_ip(text) == _ref_ip(text)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(_network_texts(), _address_texts(), _garbage))
def test_canonical_network_agrees_with_ip_network_strict_false(text):
    assume("[" not in text)  # bracketed addresses are an IP notation, not a network one
    assert canonical_network(text) == _ref_net(text)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.one_of(_network_texts(), _address_texts(), _garbage), max_size=8))
def test_add_networks_inline_paths_give_the_tokens_of_canonical_network(texts):
    ts = TokenSet()
    add_networks(ts, texts, K1)
    want = TokenSet()
    for t in texts:
        canon = canonical_network(t)
        if canon is not None:
            want.networks.append(token("net", canon, K1))
    assert _hex(ts.finish().networks) == _hex(want.finish().networks)
    assert ts.skipped["network_invalid"] == sum(canonical_network(t) is None for t in texts)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.one_of(_address_texts(), _garbage), max_size=8))
def test_add_servers_inline_ipv4_path_gives_the_tokens_of_canonical_ip(texts):
    ts = TokenSet()
    add_servers(ts, [(None, t) for t in texts], K1)
    want = TokenSet()
    for t in texts:
        packed = canonical_ip(t)
        if packed is not None:
            want.servers.append(token("ip", packed, K1))
    assert _hex(ts.finish().servers) == _hex(want.finish().servers)
