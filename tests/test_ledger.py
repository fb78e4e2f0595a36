"""The ledger: hash chain, tamper evidence, torn-line repair, rotation and write errors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fluxagent.errors import StateError
from fluxagent.statedir.ledger import ANCHOR, GENESIS, Ledger, LedgerEntry, Writer

NOW = 1_760_000_000


def payload(seq: int) -> bytes:
    return b'{"body":{"hostname":"billing.example.com"},"seq":%d,"v":1}' % seq


def add(ledger: Ledger, seq: int) -> LedgerEntry:
    return ledger.append(
        now=NOW + seq, event="sent", kind="heartbeat", outcome="ok", endpoint="/v1/heartbeat",
        seq=seq, payload=payload(seq), http_status=200, receipt=b"receipt %d" % seq,
    )  # fmt: skip


def fill(
    directory: Path, count: int, max_segment_bytes: int = 2**22, max_segments: int = 8
) -> Ledger:
    ledger = Ledger(directory, max_segment_bytes=max_segment_bytes, max_segments=max_segments)
    for seq in range(1, count + 1):
        add(ledger, seq)
    return ledger


def segment(directory: Path, first_n: int = 1) -> Path:
    return directory / f"{first_n:012d}.jsonl"


def rewrite_line(path: Path, index: int, change: bytes, to: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    assert change in lines[index]
    lines[index] = lines[index].replace(change, to, 1)
    path.write_bytes(b"\n".join(lines))


def test_entries_are_chained_compact_sorted_json_lines(tmp_path: Path) -> None:
    ledger = fill(tmp_path, 3)
    raw = segment(tmp_path).read_bytes()
    lines = raw.split(b"\n")
    assert raw.endswith(b"\n") and len(lines) == 4
    first = json.loads(lines[0])
    assert list(first) == sorted(first)
    assert b" " not in lines[0].replace(b"billing.example.com", b"")
    assert first["n"] == 1 and first["prev"] == GENESIS
    assert json.loads(lines[1])["prev"] == hashlib.sha256(lines[0]).hexdigest()
    assert first["payload"] == payload(1).decode()
    assert first["payload_sha256"] == hashlib.sha256(payload(1)).hexdigest()
    assert first["receipt_sha256"] == hashlib.sha256(b"receipt 1").hexdigest()
    assert ledger.head is not None and ledger.head.n == 3
    assert ledger.verify().ok and ledger.verify().checked == 3


def test_receipts_are_only_recorded_as_their_hash(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.append(now=NOW, event="sent", kind="credentials", outcome="ok", seq=1,
                  payload=b"{}", receipt=b'{"secret":"hunter2-token"}')  # fmt: skip
    assert b"hunter2" not in segment(tmp_path).read_bytes()
    digest = hashlib.sha256(b"receipt").hexdigest()
    entry = ledger.append(now=NOW, event="sent", kind="heartbeat", outcome="ok",
                          receipt_sha256=digest)  # fmt: skip
    assert entry.receipt_sha256 == digest and entry.payload is None


def test_append_continues_the_chain_after_reopen(tmp_path: Path) -> None:
    third = fill(tmp_path, 3).head
    again = Ledger(tmp_path)
    fourth = add(again, 4)
    assert third is not None and fourth.n == 4 and fourth.prev == third.hash
    assert again.verify().ok
    assert again.max_seq() == 4


def test_entries_iterate_both_ways_and_get_finds_by_number(tmp_path: Path) -> None:
    ledger = fill(tmp_path, 5)
    assert [e.n for e in ledger.entries()] == [1, 2, 3, 4, 5]
    assert [e.n for e in ledger.entries(reverse=True)] == [5, 4, 3, 2, 1]
    got = ledger.get(3)
    assert got is not None and got.seq == 3 and got.payload == payload(3).decode()
    assert ledger.get(99) is None
    assert set(got.as_dict()) >= {"n", "prev", "hash", "event", "receipt_sha256"}


def test_append_refuses_event_words_that_are_not_short_lowercase(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    with pytest.raises(ValueError):
        ledger.append(now=NOW, event="Sent Successfully!", kind="heartbeat", outcome="ok")
    assert not segment(tmp_path).exists()


def test_detail_is_cut_short(tmp_path: Path) -> None:
    entry = Ledger(tmp_path).append(now=NOW, event="failed", kind="digest", outcome="error",
                                    detail="x" * 5000)  # fmt: skip
    assert entry.detail is not None and len(entry.detail) == 300


def test_tampering_with_one_byte_names_the_altered_entry(tmp_path: Path) -> None:
    fill(tmp_path, 10)
    rewrite_line(segment(tmp_path), 4, b'"ts":1760000005', b'"ts":1760000006')
    result = Ledger(tmp_path).verify()
    assert not result.ok
    assert result.first_bad_n == 5 and result.segment == "000000000001.jsonl"
    assert result.reason is not None
    assert "hash chain broken at entry 6 in 000000000001.jsonl" in result.reason
    assert "entry 5 was altered" in result.reason
    assert result.checked == 5


def test_tampering_with_a_prev_field_names_that_entry(tmp_path: Path) -> None:
    fill(tmp_path, 10)
    line = segment(tmp_path).read_bytes().split(b"\n")[6]
    prev = json.loads(line)["prev"].encode()
    rewrite_line(segment(tmp_path), 6, prev, prev[:-1] + (b"0" if prev[-1:] != b"0" else b"1"))
    result = Ledger(tmp_path).verify()
    assert not result.ok and result.first_bad_n == 7
    assert result.reason is not None and "entry 7 was altered" in result.reason


def test_tampering_with_the_newest_payload_is_caught_by_its_hash(tmp_path: Path) -> None:
    fill(tmp_path, 4)
    rewrite_line(segment(tmp_path), 3, b"billing.example.com", b"billing.example.org")
    result = Ledger(tmp_path).verify()
    assert not result.ok and result.first_bad_n == 4
    assert result.reason is not None and "payload_sha256 does not match payload" in result.reason


def test_a_torn_last_line_is_truncated_and_the_chain_continues(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    whole = segment(tmp_path).read_bytes()
    torn = b'{"detail":null,"endpoint":"/v1/heart'  # kill -9 in the middle of write()
    with open(segment(tmp_path), "ab") as f:
        f.write(torn)
    ledger = Ledger(tmp_path)
    assert ledger.torn_bytes == len(torn)
    assert segment(tmp_path).read_bytes() == whole
    assert add(ledger, 4).n == 4
    assert ledger.verify().ok and ledger.verify().checked == 4


def test_readonly_open_leaves_an_unterminated_line_alone_and_skips_it(tmp_path: Path) -> None:
    fill(tmp_path, 2)
    with open(segment(tmp_path), "ab") as f:
        f.write(b'{"detail"')
    before = segment(tmp_path).read_bytes()
    ledger = Ledger(tmp_path, readonly=True)
    result = ledger.verify()
    assert result.ok and result.checked == 2 and result.note is not None
    assert segment(tmp_path).read_bytes() == before
    with pytest.raises(StateError):
        add(ledger, 3)


def test_other_corruption_is_reported_not_fixed(tmp_path: Path) -> None:
    fill(tmp_path, 5)
    rewrite_line(segment(tmp_path), 2, b'"event":"sent"', b'"event":"sent')
    before = segment(tmp_path).read_bytes()
    ledger = Ledger(tmp_path)
    assert segment(tmp_path).read_bytes() == before
    result = ledger.verify()
    assert not result.ok and result.first_bad_n == 3
    assert result.reason == "entry 3 in 000000000001.jsonl: not valid JSON"
    with pytest.raises(StateError):
        list(ledger.entries())


def test_an_unreadable_last_entry_blocks_appends_until_resolved(tmp_path: Path) -> None:
    fill(tmp_path, 2)
    rewrite_line(segment(tmp_path), 1, b'"n":2', b'"n":"2"')
    before = segment(tmp_path).read_bytes()
    ledger = Ledger(tmp_path)
    assert ledger.problem is not None
    with pytest.raises(StateError) as exc:
        add(ledger, 3)
    assert exc.value.hint and "log --verify" in exc.value.hint
    assert segment(tmp_path).read_bytes() == before


def test_rotation_drops_old_segments_and_the_kept_chain_still_verifies(tmp_path: Path) -> None:
    ledger = fill(tmp_path, 60, max_segment_bytes=2000, max_segments=3)
    segs = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert len(segs) == 3
    assert all(p.stat().st_size <= 2000 for p in tmp_path.glob("*.jsonl"))
    anchor = json.loads((tmp_path / ANCHOR).read_text())
    assert anchor["n"] == int(segs[0][:12]) > 1
    result = ledger.verify()
    assert result.ok and result.checked == 61 - anchor["n"]
    kept = [e.n for e in ledger.entries()]
    assert kept == list(range(anchor["n"], 61))
    assert ledger.get(1) is None and ledger.get(60) is not None
    assert Ledger(tmp_path, max_segment_bytes=2000, max_segments=3).verify().ok


def test_removing_the_oldest_kept_segment_behind_its_back_fails_verify(tmp_path: Path) -> None:
    ledger = fill(tmp_path, 60, max_segment_bytes=2000, max_segments=3)
    oldest = sorted(tmp_path.glob("*.jsonl"))[0]
    oldest.unlink()
    result = ledger.verify()
    assert not result.ok and result.reason is not None and "should start at entry" in result.reason


def test_a_segment_drop_interrupted_after_the_anchor_is_finished_at_open(tmp_path: Path) -> None:
    fill(tmp_path, 30, max_segment_bytes=2000, max_segments=8)
    segs = sorted(tmp_path.glob("*.jsonl"))
    assert len(segs) >= 3
    first = json.loads(segs[1].read_bytes().split(b"\n")[0])
    (tmp_path / ANCHOR).write_text(json.dumps({"n": first["n"], "prev": first["prev"]}))
    ledger = Ledger(tmp_path, max_segment_bytes=2000)
    assert not segs[0].exists()
    assert ledger.verify().ok


def failing_writer(fd: int, data: bytes) -> int:
    """Write half of data, then fail the way a full disk does."""
    os.write(fd, data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def short_writer(fd: int, data: bytes) -> int:
    return os.write(fd, data[:10])


@pytest.mark.parametrize("writer", [failing_writer, short_writer])
def test_a_failed_append_leaves_no_partial_line(tmp_path: Path, writer: Writer) -> None:
    fill(tmp_path, 3)
    before = segment(tmp_path).read_bytes()
    ledger = Ledger(tmp_path, writer=writer)
    with pytest.raises(StateError):
        add(ledger, 4)
    assert segment(tmp_path).read_bytes() == before
    reopened = Ledger(tmp_path)
    assert reopened.torn_bytes == 0 and reopened.verify().ok
    assert add(reopened, 4).n == 4


CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_ledger import add
from fluxagent.statedir.ledger import Ledger
ledger = Ledger(Path(sys.argv[1]), max_segment_bytes=3000, max_segments=3)
seq = ledger.head.n if ledger.head else 0
while True:
    seq += 1
    add(ledger, seq)
    print(seq, flush=True)
"""


@pytest.mark.slow
def test_ledger_verifies_after_kill_9_in_the_middle_of_appends(tmp_path: Path) -> None:
    last = 0
    for _round in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(Path(__file__).parent)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        for _ in range(40):
            child.stdout.readline()
        child.send_signal(signal.SIGKILL)
        child.wait()
        ledger = Ledger(tmp_path, max_segment_bytes=3000, max_segments=3)
        assert ledger.problem is None
        result = ledger.verify()
        assert result.ok, result.reason
        assert ledger.head is not None and ledger.head.n >= last + 40
        last = ledger.head.n


def test_reopened_max_seq_is_the_highest_entry_seq_and_text_that_looks_like_one_does_not_count(
        tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.append(now=NOW, event="sent", kind="heartbeat", outcome="delivered", seq=7, payload=b'{"seq":7}')
    ledger.append(now=NOW, event="attempt", kind="heartbeat", outcome="retry", seq=3,
                  detail='server said {"seq":999999999} and \\"seq\\":888888')  # a hostile reason, logged
    ledger.append(now=NOW, event="refused", kind="answer", outcome="refused", detail='"seq": 77777')
    assert Ledger(tmp_path).max_seq() == 7
    assert Ledger(tmp_path, readonly=True).max_seq() == 7
