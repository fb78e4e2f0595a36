"""The spool: durable order, supersede, bounded overflow, crash clean-up and write errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

from fluxagent.errors import StateError
from fluxagent.facts import Counts
from fluxagent.statedir.spool import Spool, SpoolFull
from fluxagent.wire.messages import Message, Sealed, build_heartbeat, build_license, seal

KEY = nacl.signing.SigningKey(b"\x07" * 32)
IID = "0b6f3c1e-8a4d-4c2b-9e7f-1a2b3c4d5e6f"
NOW = 1_760_000_000


def make(kind: str, seq: int, tokens: int = 0) -> Sealed:
    """Return a really sealed message of kind with seq (a digest with `tokens` server tokens)."""
    if kind == "heartbeat":
        msg = build_heartbeat("4.12.3", "billing.example.com", Counts(seq, 2, 3))
    elif kind == "license":
        msg = build_license("billing.example.com", "LIC-1", "valid", bytes(KEY.verify_key))
    else:
        servers = [f"{i:032x}" for i in range(tokens)]
        body = {"key_id": "0" * 16, "root": f"{seq:064x}", "full": True, "servers": servers,
                "networks": []}  # fmt: skip
        msg = Message("digest", body)
    return seal(msg, signing_key=KEY, iid=IID, aud="lic.example", seq=seq, now=NOW,
                nonce=seq.to_bytes(16, "big"))  # fmt: skip


def open_spool(tmp_path: Path, max_messages: int = 100, max_bytes: int = 10**7) -> Spool:
    return Spool(tmp_path / "spool", max_messages, max_bytes)


def seqs(spool: Spool) -> list[int]:
    return [e.seq for e in spool.entries()]


def files(spool: Spool) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(spool.directory / d)) for d in ("tmp", "new", "bad")}


def test_entries_come_back_oldest_first_and_survive_reopen(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for seq, kind in [(1, "heartbeat"), (2, "license"), (3, "heartbeat"), (4, "digest")]:
        spool.put(make(kind, seq), NOW)
    assert seqs(spool) == [1, 2, 3, 4]
    again = open_spool(tmp_path)
    assert seqs(again) == [1, 2, 3, 4]
    assert again.depth() == 4
    assert again.max_seq() == 4


def test_entry_file_holds_the_exact_envelope_and_metadata(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    sealed = make("heartbeat", 7)
    result = spool.put(sealed, NOW + 5)
    assert result.entry.path.name == "00000000000000000007-heartbeat.json"
    doc = json.loads(result.entry.path.read_bytes())
    assert doc == {
        "kind": "heartbeat", "endpoint": "/v1/heartbeat", "seq": 7,
        "payload_sha256": sealed.payload_sha256, "envelope": sealed.envelope.decode(),
        "spooled_at": NOW + 5,
    }  # fmt: skip
    (entry,) = open_spool(tmp_path).entries()
    assert entry.envelope == sealed.envelope
    assert entry.payload == sealed.payload
    assert entry.size == result.entry.path.stat().st_size == spool.bytes_used()
    assert result.entry.path.stat().st_mode & 0o777 == 0o600
    assert (spool.directory / "new").stat().st_mode & 0o777 == 0o700


def test_new_license_supersedes_unsent_older_license_only(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.put(make("license", 1), NOW)
    spool.put(make("heartbeat", 2), NOW)
    spool.put(make("digest", 3), NOW)
    result = spool.put(make("license", 4), NOW)
    assert [e.seq for e in result.superseded] == [1]
    assert result.superseded[0].payload == make("license", 1).payload  # for the ledger
    assert seqs(spool) == [2, 3, 4]
    assert open_spool(tmp_path).counters()["superseded"] == 1


def test_new_digest_supersedes_older_digest_and_heartbeats_are_kept(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for seq, kind in [(1, "digest"), (2, "heartbeat"), (3, "heartbeat"), (4, "digest")]:
        spool.put(make(kind, seq), NOW)
    assert seqs(spool) == [2, 3, 4]


def test_overflow_drops_the_oldest_heartbeat_and_persists_the_counter(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_messages=3)
    for seq, kind in [(1, "license"), (2, "heartbeat"), (3, "heartbeat")]:
        spool.put(make(kind, seq), NOW)
    result = spool.put(make("heartbeat", 4), NOW)
    assert [e.seq for e in result.dropped] == [2]
    assert seqs(spool) == [1, 3, 4]
    assert open_spool(tmp_path, max_messages=3).counters() == {
        "superseded": 0, "dropped_overflow": 1, "corrupt": 0,
    }  # fmt: skip


def test_byte_bound_drops_heartbeats_until_the_new_entry_fits(tmp_path: Path) -> None:
    probe = open_spool(tmp_path / "probe")
    size = probe.put(make("heartbeat", 1), NOW).entry.size
    spool = open_spool(tmp_path, max_bytes=3 * size + size // 2)
    for seq in (1, 2, 3):
        spool.put(make("heartbeat", seq), NOW)
    spool.put(make("heartbeat", 4), NOW)
    assert seqs(spool) == [2, 3, 4]
    assert spool.bytes_used() <= spool.max_bytes


def test_put_is_refused_rather_than_dropping_license_or_digest(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_messages=2)
    spool.put(make("license", 1), NOW)
    spool.put(make("digest", 2), NOW)
    before = files(spool)
    with pytest.raises(SpoolFull) as exc:
        spool.put(make("heartbeat", 3), NOW)
    assert "no heartbeat to drop" in exc.value.message
    assert isinstance(exc.value, StateError)
    assert files(spool) == before
    assert spool.counters()["dropped_overflow"] == 0


def test_refused_put_drops_nothing_even_when_some_heartbeats_could_go(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_messages=100, max_bytes=3000)
    spool.put(make("heartbeat", 1), NOW)
    with pytest.raises(SpoolFull):
        spool.put(make("digest", 2, tokens=200), NOW)  # larger than the whole spool
    assert seqs(spool) == [1]


def test_put_refuses_a_seq_already_queued(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.put(make("heartbeat", 1), NOW)
    with pytest.raises(StateError):
        spool.put(make("heartbeat", 1), NOW)


def test_remove_deletes_the_entry_for_good_and_is_idempotent(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.put(make("heartbeat", 1), NOW)
    spool.put(make("heartbeat", 2), NOW)
    first = spool.oldest()
    assert first is not None and first.seq == 1
    spool.remove(first)
    spool.remove(first)
    assert seqs(spool) == [2]
    assert seqs(open_spool(tmp_path)) == [2]


def test_corrupt_entries_are_moved_to_bad_and_counted(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.put(make("heartbeat", 1), NOW)
    good = spool.put(make("heartbeat", 2), NOW).entry.path
    new = spool.directory / "new"
    (new / "00000000000000000003-heartbeat.json").write_text('{"kind": "heart')
    doc = json.loads(good.read_bytes())
    doc["payload_sha256"] = "0" * 64  # no longer matches the envelope
    good.write_text(json.dumps(doc))
    again = open_spool(tmp_path)
    assert seqs(again) == [1]
    assert sorted(p.name for p in again.opened.quarantined) == [
        "00000000000000000002-heartbeat.json", "00000000000000000003-heartbeat.json",
    ]  # fmt: skip
    assert files(again)["bad"] == [p.name for p in again.opened.quarantined]
    assert open_spool(tmp_path).counters()["corrupt"] == 2


def test_stray_temp_files_are_removed_at_open(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.put(make("heartbeat", 1), NOW)
    (spool.directory / "tmp" / "00000000000000000002-heartbeat.json").write_text('{"half')
    (spool.directory / ".counters.json.tmp-1-abcd").write_text("{")
    again = open_spool(tmp_path)
    assert again.opened.stray_removed == 2
    assert files(again)["tmp"] == []
    assert seqs(again) == [1]


def test_open_finishes_a_supersede_interrupted_by_a_crash(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.put(make("license", 1), NOW)
    spool.put(make("heartbeat", 2), NOW)
    # the state a kill -9 leaves between renaming the new license in and deleting the old one
    other = open_spool(tmp_path / "other")
    newer = other.put(make("license", 3), NOW).entry.path
    os.replace(newer, spool.directory / "new" / newer.name)
    again = open_spool(tmp_path)
    assert [e.seq for e in again.opened.superseded] == [1]
    assert seqs(again) == [2, 3]
    assert again.counters()["superseded"] == 1


def failing_writer(fd: int, data: bytes) -> int:
    """Write half of data, then fail the way a full disk does."""
    os.write(fd, data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_leaves_the_queue_exactly_as_it_was(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.put(make("license", 1), NOW)
    spool.put(make("heartbeat", 2), NOW)
    before = files(spool)
    broken = Spool(tmp_path / "spool", 100, 10**7, writer=failing_writer)
    with pytest.raises(StateError) as exc:
        broken.put(make("license", 3), NOW)
    assert "not queued" in exc.value.message
    assert isinstance(exc.value.__cause__, OSError)
    assert files(broken) == before  # old license not superseded, no half entry anywhere
    assert seqs(broken) == [1, 2]
    assert broken.counters()["superseded"] == 0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs (needs root and CAP_SYS_ADMIN; skipped otherwise)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]
    if os.geteuid() != 0 or subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_real_enospc_on_a_tiny_filesystem_leaves_the_queue_intact(tiny_fs: Path) -> None:
    spool = Spool(tiny_fs / "spool", 100, 10**7)
    spool.put(make("heartbeat", 1), NOW)
    spool.put(make("digest", 2), NOW)
    before = files(spool)
    with pytest.raises(StateError) as exc:
        spool.put(make("digest", 3, tokens=2000), NOW)  # ~90 KB does not fit in 64 KiB
    assert "No space left" in exc.value.message
    assert files(spool) == before
    assert seqs(Spool(tiny_fs / "spool", 100, 10**7)) == [1, 2]


CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_spool import NOW, make
from fluxagent.statedir.spool import Spool
spool = Spool(Path(sys.argv[1]), 50, 10**7)
seq = spool.max_seq()
while True:
    seq += 1
    spool.put(make(("heartbeat", "license", "digest")[seq % 3], seq), NOW)
    print(seq, flush=True)
"""


@pytest.mark.slow
def test_spool_opens_cleanly_after_kill_9_in_the_middle_of_puts(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    for _round in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), str(Path(__file__).parent)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        for _ in range(40):
            child.stdout.readline()
        child.send_signal(signal.SIGKILL)
        child.wait()
        spool = Spool(directory, 50, 10**7)
        assert spool.opened.quarantined == ()
        entries = spool.entries()
        assert [e.kind for e in entries].count("license") <= 1
        assert [e.kind for e in entries].count("digest") <= 1
        assert [e.seq for e in entries] == sorted(e.seq for e in entries)
        assert all(e.payload for e in entries)
        assert os.listdir(directory / "tmp") == []
        assert spool.depth() <= 50
