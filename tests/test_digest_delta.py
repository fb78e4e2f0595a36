"""Digest deltas against the reference server over loopback HTTP: after an acknowledged full digest the
agent sends what changed, the server applies it and checks the root; anything doubtful means full."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from agentkit import delivered, ledger_entries, wire
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inventorykit import HOST, engine_for
from support.clock import Clock

from fluxagent.delivery import SCHEDULED
from fluxagent.facts import Counts
from fluxagent.identifiers import TokenSet, add_machine, add_networks, add_servers, key_id
from fluxagent.statedir import digestset, identity
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.server_protocol import LicensePolicy, Verifier
from fluxagent.wire import messages

DAY = 86400
T0 = 1_795_000_000


class Inventory:
    """A platform source whose servers and ranges the test edits between digests."""

    def __init__(self, servers: list[str], networks: list[str]) -> None:
        self.servers, self.networks = servers, networks

    def version(self) -> str:
        return "4.12.3"

    def counts(self) -> Counts:
        return Counts(1, 2, len(self.servers))

    def iter_servers(self) -> Iterator[tuple[Any, ...]]:
        return iter([(s, None) for s in self.servers])

    def iter_networks(self) -> Iterator[object]:
        return iter(list(self.networks))

    def close(self) -> None:
        pass


def hosts(a: int, b: int) -> list[str]:
    return [f"node{i}.dc.example.net" for i in range(a, b)]


def nets(a: int, b: int) -> list[str]:
    return [f"10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(a, b)]



@pytest.fixture
def server(keys: list[nacl.signing.SigningKey]) -> Iterator[ReferenceServer]:
    clock = Clock(T0)
    with ReferenceServer(signing_keys=keys, clock=clock) as srv:
        srv.test_clock = clock  # type: ignore[attr-defined]
        yield srv


class Setup:
    def __init__(self, root: Path, server: ReferenceServer, keys: list[nacl.signing.SigningKey]) -> None:
        self.server = server
        self.ws = wire(root, server, keys, now=T0)
        self.clock: Clock = server.test_clock  # type: ignore[attr-defined]
        self.inv = Inventory(hosts(0, 400), nets(0, 400))
        self.engine = engine_for(self.ws.cfg, self.clock, self.inv)
        self.iid = identity.load(self.ws.cfg.instance.state_dir).instance_id

    def restart(self) -> None:
        self.engine = engine_for(self.ws.cfg, self.clock, self.inv)

    def digest(self) -> dict[str, Any]:
        """Move a day on, run a cycle; return the body of the last digest the server accepted."""
        self.clock.now += DAY + 3600
        self.engine.cycle(self.clock(), self.engine.due(self.clock()))
        return delivered(self.server, "/v1/digest")[-1]["body"]

    def server_matches_agent(self) -> None:
        root, servers, networks = self.server.digest_tokens(self.iid)
        want = TokenSet()
        add_servers(want, [(h, None) for h in self.inv.servers], self.engine.identity.digest_key)
        add_machine(want, HOST.machine_id, HOST.macs, self.engine.identity.digest_key)
        add_networks(want, [*self.inv.networks, *HOST.networks], self.engine.identity.digest_key)
        want.finish()
        assert (root, servers, networks) == (want.root, want.servers.hex(), want.networks.hex())


@pytest.fixture
def s(tmp_path: Path, server: ReferenceServer, keys: list[nacl.signing.SigningKey]) -> Setup:
    setup = Setup(tmp_path / "ws", server, keys)
    setup.engine.cycle(setup.clock(), list(SCHEDULED))
    assert delivered(server, "/v1/digest")[-1]["body"]["full"] is True
    return setup


def test_added_servers_go_as_a_delta_the_server_applies(s: Setup) -> None:
    s.inv.servers += hosts(1000, 1010)
    body = s.digest()
    assert body["full"] is False and len(body["added_servers"]) == 10
    assert body["removed_servers"] == body["added_networks"] == body["removed_networks"] == []
    assert "servers" not in body
    s.server_matches_agent()


def test_removed_ranges_go_as_a_delta_the_server_applies(s: Setup) -> None:
    del s.inv.networks[:7]
    body = s.digest()
    assert body["full"] is False and len(body["removed_networks"]) == 7 and body["added_networks"] == []
    s.server_matches_agent()


def test_additions_and_removals_together_go_as_one_delta_and_later_deltas_build_on_it(s: Setup) -> None:
    s.inv.servers = s.inv.servers[5:] + hosts(2000, 2003)
    s.inv.networks = s.inv.networks[:-4] + nets(3000, 3001)
    body = s.digest()
    assert (len(body["added_servers"]), len(body["removed_servers"])) == (3, 5)
    assert (len(body["added_networks"]), len(body["removed_networks"])) == (1, 4)
    s.server_matches_agent()
    s.inv.servers.pop()
    body = s.digest()
    assert body["base"] != body["root"] and len(body["removed_servers"]) == 1
    s.server_matches_agent()


def test_an_unchanged_inventory_sends_neither_lists_nor_a_delta(s: Setup) -> None:
    body = s.digest()
    assert set(body) == {"full", "key_id", "root"} and body["full"] is False
    s.server_matches_agent()


def test_a_large_change_goes_as_a_full_digest(s: Setup) -> None:
    s.inv.servers = hosts(5000, 5400)
    body = s.digest()
    assert body["full"] is True
    s.server_matches_agent()


def test_a_new_digest_key_sends_a_full_digest_with_the_new_key_id(s: Setup) -> None:
    old_id = key_id(s.engine.identity.digest_key)
    sd = s.ws.cfg.instance.state_dir
    (sd / identity.DIGEST_FILE).unlink()
    identity.ensure(sd, now=int(s.clock()))  # a fresh digest key, as after a rotation
    s.restart()
    s.inv.servers += hosts(1000, 1001)
    body = s.digest()
    assert body["full"] is True and body["key_id"] != old_id
    s.server_matches_agent()


def test_a_server_that_lost_its_state_answers_need_full_and_gets_a_full_digest(s: Setup) -> None:
    s.server.forget_digests()
    s.inv.servers += hosts(1000, 1002)
    body = s.digest()
    sent = [b["body"] for b in delivered(s.server, "/v1/digest")[-2:]]
    assert sent[0]["full"] is False and "base" in sent[0]  # the delta, answered need_full
    assert body["full"] is True
    s.server_matches_agent()


def test_a_corrupted_acknowledged_set_on_disk_means_a_full_digest_never_a_wrong_delta(s: Setup) -> None:
    path = s.ws.cfg.instance.state_dir / digestset.ACKED
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01  # one bit of one token
    path.write_bytes(bytes(data))
    s.inv.servers += hosts(1000, 1001)
    body = s.digest()
    assert body["full"] is True
    s.server_matches_agent()


class DiesAfterAnswer:
    """A transport that dies like kill -9 right after the server answered a digest (nothing recorded)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, url: str, body: Any, *, deadline: float) -> Any:
        response = self.inner(url, body, deadline=deadline)
        if url.endswith("/v1/digest"):
            raise Killed()
        return response


class Killed(BaseException):
    """The process is gone: nothing after this point runs."""


def test_killed_between_sending_a_delta_and_storing_its_acknowledgement_the_next_digests_are_still_right(
    s: Setup,
) -> None:
    s.inv.servers += hosts(1000, 1004)
    s.engine.deps.transport = DiesAfterAnswer(s.engine.deps.transport)
    s.clock.now += DAY + 3600
    with pytest.raises(Killed):
        s.engine.cycle(s.clock(), s.engine.due(s.clock()))
    s.server_matches_agent()  # the server applied the delta; the agent never heard
    s.restart()  # a new process: the spooled delta is resent byte for byte, the server acknowledges it again
    result = s.engine.flush()
    assert [e.kind for e, _ in result.delivered] == ["digest"]
    s.inv.networks += nets(4000, 4002)
    body = s.digest()
    assert body["full"] is False and len(body["added_networks"]) == 2
    s.server_matches_agent()


def test_a_refused_delta_makes_the_next_digest_full(s: Setup) -> None:
    servers = s.server.digest_tokens(s.iid)[1]
    s.server.verifier.instances[s.iid].servers = servers[1:]  # the server's copy drifted: roots will differ
    s.inv.servers += hosts(1000, 1001)
    s.clock.now += DAY + 3600
    s.engine.cycle(s.clock(), s.engine.due(s.clock()))
    rejected = [e for e in ledger_entries(s.ws.cfg) if e.kind == "digest" and e.event == "rejected"]
    assert len(rejected) == 1 and rejected[0].http_status == 422
    assert delivered(s.server, "/v1/digest")[-1]["body"]["full"] is True
    s.server_matches_agent()


def test_need_full_on_every_answer_for_a_day_gives_at_most_24_full_digests_and_keeps_every_ledger_entry(
    s: Setup,
) -> None:
    s.server.verifier.always_need_full = True
    s.clock.now = start = s.engine.schedule.digest.next_due or s.clock.now  # the daily digest is due
    sent_before = len(delivered(s.server, "/v1/digest"))
    while s.clock.now < start + DAY:
        s.clock.now += 300
        s.engine.cycle(s.clock(), s.engine.due(s.clock()))
    digests = delivered(s.server, "/v1/digest")[sent_before:]
    fulls = [d for d in digests if d["body"]["full"]]
    assert 20 <= len(fulls) <= 24 and len(digests) <= len(fulls) + 1  # + the first, unchanged one
    entries = ledger_entries(s.ws.cfg)
    heartbeats = [e for e in entries if e.kind == "heartbeat" and e.event == "sent"]
    assert len(heartbeats) == len(delivered(s.server, "/v1/heartbeat")) >= 22
    assert [e for e in entries if e.kind == "license" and e.event == "sent"]
    assert entries[0].n == 1  # nothing rotated away


def test_run_once_every_minute_after_need_full_still_sends_a_full_digest_at_most_once_an_hour(s: Setup) -> None:
    s.server.verifier.always_need_full = True
    sent_before = len(delivered(s.server, "/v1/digest"))
    for _ in range(120):  # two hours of a cron-driven `run --once`: every kind asked for each time
        s.clock.now += 60
        s.engine.cycle(s.clock(), list(SCHEDULED))
    digests = delivered(s.server, "/v1/digest")[sent_before:]
    fulls = [d for d in digests if d["body"]["full"]]
    assert 1 <= len(fulls) <= 3, len(fulls)  # not one per run
    assert len(delivered(s.server, "/v1/heartbeat")) >= 120  # the other kinds went every time
    s.server.verifier.always_need_full = False
    s.clock.now += 3601
    s.engine.cycle(s.clock(), list(SCHEDULED))
    assert delivered(s.server, "/v1/digest")[-1]["body"]["full"] is True
    s.server_matches_agent()


# ---- the property: any A → B, applied by the server, gives B ----

_HOSTS = st.lists(st.integers(0, 60).map(lambda i: f"h{i}.example.net"), max_size=40)
_NETS = st.lists(st.integers(0, 60).map(lambda i: f"10.0.{i}.0/24"), max_size=40)
SIGNING = nacl.signing.SigningKey(b"\x05" * 32)
DKEY = b"\x06" * 32
IID = "0b7a9c1e-4d2f-4a6b-8c3d-9e0f1a2b3c4d"


def _tokens(servers: list[str], networks: list[str]) -> TokenSet:
    t = TokenSet()
    add_servers(t, [(h, None) for h in servers], DKEY)
    add_networks(t, networks, DKEY)
    return t.finish()


def _post(v: Verifier, msg: messages.Message, seq: int) -> dict[str, Any]:
    sealed = messages.seal(msg, signing_key=SIGNING, iid=IID, aud="licensing.example.test", seq=seq, now=T0,
                           nonce=os.urandom(16))
    outcome = v.handle(msg.endpoint, sealed.envelope)
    assert outcome.status == 200, outcome.detail
    assert outcome.receipt_body is not None
    return outcome.receipt_body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_HOSTS, _NETS, _HOSTS, _NETS)
def test_any_inventory_change_applied_by_the_server_gives_the_new_token_set_and_root(
    sa: list[str], na: list[str], sb: list[str], nb: list[str]
) -> None:
    v = Verifier(audience="licensing.example.test", clock=lambda: T0, license=LicensePolicy())
    _post(v, messages.build_license("billing.example.com", None, "valid", bytes(SIGNING.verify_key)), 1)
    a, b = _tokens(sa, na), _tokens(sb, nb)
    kid = key_id(DKEY)
    assert _post(v, messages.build_digest(a, kid, None), 2) == {"need_full": False}
    msg = messages.build_digest(b, kid, a.root, base=_tokens(sa, na))
    assert _post(v, msg, 3) == {"need_full": False}
    assert v.digest_tokens(IID) == (b.root, b.servers.hex(), b.networks.hex())



def test_a_real_kill_9_after_the_server_applied_a_delta_and_before_the_agent_stored_it_leaves_the_next_digests_right(
    tmp_path: Path, keys: list[nacl.signing.SigningKey]
) -> None:
    import sqlite3
    import subprocess
    import sys
    import time

    from agentkit import clean_env

    from fluxagent.testing.server_faults import Fault

    with ReferenceServer(signing_keys=keys) as server:
        ws = wire(tmp_path / "ws", server, keys)
        iid = identity.load(ws.cfg.instance.state_dir).instance_id
        argv = [sys.executable, "-m", "fluxagent", "--config", str(ws.cfg.source), "run", "--once"]
        env = clean_env(NO_PROXY="127.0.0.1")
        assert subprocess.run(argv, env=env, capture_output=True, timeout=120).returncode == 0
        full_root = server.digest_tokens(iid)[0]
        db = ws.cfg.platform.database.removeprefix("sqlite:///")

        def add(table: str, column: str, values: list[str]) -> None:
            conn = sqlite3.connect(db)
            conn.executemany(f"INSERT INTO {table} ({column}) VALUES (?)", [(v,) for v in values])
            conn.commit()
            conn.close()

        add("servers", "hostname", hosts(7000, 7003))
        server.inject(Fault.delay(30, endpoint="/v1/digest"))  # applied at once, answered 30 s later
        agent = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while server.digest_tokens(iid)[0] == full_root and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.digest_tokens(iid)[0] != full_root  # the server holds the delta's result
            agent.kill()  # SIGKILL: the agent never hears the answer
        finally:
            agent.wait(timeout=30)
        assert agent.returncode == -9
        assert (ws.cfg.instance.state_dir / digestset.PENDING).exists()  # the set of the unanswered delta

        done = subprocess.run(argv, env=env, capture_output=True, timeout=120)  # resends the same delta
        assert done.returncode == 0, done.stdout[-2000:]
        add("network_ranges", "cidr", ["198.18.7.0/24"])
        done = subprocess.run(argv, env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]
    # by seq: the killed request is recorded only when its delayed answer went out, at the server's stop
    sent = {r.payload["seq"]: r.payload["body"] for r in server.received
            if r.endpoint == "/v1/digest" and r.status == 200 and r.payload}
    digests = [sent[seq] for seq in sorted(sent)]
    last = digests[-1]
    assert last["full"] is False and last["added_networks"] and last["base"] == digests[-2]["root"]
    assert server.digest_tokens(iid)[0] == last["root"]  # the server applied it and the roots agree


def _random_set(n_servers: int, n_networks: int) -> TokenSet:
    from fluxagent.identifiers import TokenList

    toks = TokenSet(TokenList(os.urandom(16) for _ in range(n_servers)),
                    TokenList(os.urandom(16) for _ in range(n_networks)))
    return toks.finish()


@pytest.mark.parametrize("damage", ["none", "flip_first_token", "flip_last_network", "flip_checksum", "truncate",
                                    "extend", "swap_two_tokens", "head_count"])
def test_a_stored_set_larger_than_one_read_comes_back_whole_or_not_at_all(tmp_path: Path, damage: str) -> None:
    toks = _random_set(100_000, 70_001)  # 2.7 MB: three reads of 1 MiB, the lists meeting mid-read
    key = "0123456789abcdef"
    digestset.write_pending(tmp_path, key, toks.root, toks)
    path = tmp_path / digestset.PENDING
    data = bytearray(path.read_bytes())
    head = len(digestset.MAGIC) + 16 + 64 + 16
    if damage == "flip_first_token":
        data[head] ^= 0x80
    elif damage == "flip_last_network":
        data[-33] ^= 0x01
    elif damage == "flip_checksum":
        data[-1] ^= 0x01
    elif damage == "truncate":
        del data[-16:]
    elif damage == "extend":
        data[-32:-32] = os.urandom(16)
    elif damage == "swap_two_tokens":  # the checksum made to fit: the root still catches it
        import hashlib

        a, b = head, head + 16 * 50_000
        data[a:a + 16], data[b:b + 16] = data[b:b + 16], data[a:a + 16]
        data[-32:] = hashlib.blake2b(bytes(data[:-32]), digest_size=32).digest()
    elif damage == "head_count":
        p = len(digestset.MAGIC) + 80
        data[p:p + 8] = (100_001).to_bytes(8, "big")
    path.write_bytes(bytes(data))
    found = digestset.read(path)
    if damage != "none":
        assert found is None
        return
    assert found is not None and found.key_id == key and found.root == toks.root
    assert found.tokens.servers.buckets == toks.servers.buckets
    assert found.tokens.networks.buckets == toks.networks.buckets
    assert found.tokens.servers.finished and found.tokens.networks.finished
