"""State files: JSON helpers, the never-reused seq counter, and the persisted schedule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fluxagent.errors import StateError
from fluxagent.statedir.state import (
    SEQ_RECOVERY_GAP,
    KindSchedule,
    Schedule,
    Seq,
    load_schedule,
    read_json,
    save_schedule,
    write_json,
)


def test_read_json_returns_none_for_a_missing_file(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None


def test_write_json_writes_compact_sorted_json_with_newline_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json(path, {"b": 1, "a": [1, 2]}, mode=0o640)
    assert path.read_bytes() == b'{"a":[1,2],"b":1}\n'
    assert path.stat().st_mode & 0o777 == 0o640
    assert read_json(path) == {"a": [1, 2], "b": 1}


def test_read_json_of_a_corrupt_file_raises_state_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "license-status.json"
    path.write_text("{not json")
    with pytest.raises(StateError) as exc:
        read_json(path)
    assert str(path) in exc.value.message
    assert exc.value.hint and "move" in exc.value.hint


def test_read_json_of_a_non_object_raises_state_error(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(StateError):
        read_json(path)


def test_write_json_leaves_no_temp_file_behind(tmp_path: Path) -> None:
    write_json(tmp_path / "x.json", {"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["x.json"]


def test_seq_starts_at_one_and_last_is_zero_when_absent(tmp_path: Path) -> None:
    seq = Seq(tmp_path)
    assert seq.last() == 0
    assert seq.reserve() == 1
    assert seq.last() == 1


def test_seq_reserve_persists_before_returning_and_never_repeats_across_reopen(
    tmp_path: Path,
) -> None:
    seen = [Seq(tmp_path).reserve() for _ in range(5)]  # a fresh object each time = a restart
    assert seen == [1, 2, 3, 4, 5]
    assert (tmp_path / "seq").read_text() == "5\n"
    assert Seq(tmp_path).reserve() == 6


def test_seq_reserve_never_goes_below_the_floor(tmp_path: Path) -> None:
    seq = Seq(tmp_path)
    seq.reserve()
    assert seq.reserve(floor=40) == 41
    assert seq.recovered is None


def test_corrupt_seq_without_floor_raises_instead_of_restarting_at_one(tmp_path: Path) -> None:
    (tmp_path / "seq").write_text("garbage")
    with pytest.raises(StateError) as exc:
        Seq(tmp_path).reserve()
    assert "never be reused" in exc.value.message
    with pytest.raises(StateError):
        Seq(tmp_path).last()
    assert (tmp_path / "seq").read_text() == "garbage"  # nothing was overwritten


def test_corrupt_seq_with_floor_resumes_past_the_floor_with_a_gap(tmp_path: Path) -> None:
    (tmp_path / "seq").write_bytes(b"\x00\xff")
    seq = Seq(tmp_path)
    got = seq.reserve(floor=17)
    assert got == 17 + SEQ_RECOVERY_GAP + 1
    assert seq.recovered is not None and "corrupt" in seq.recovered
    assert Seq(tmp_path).reserve() == got + 1


def test_missing_seq_with_records_on_file_resumes_past_them(tmp_path: Path) -> None:
    seq = Seq(tmp_path)
    assert seq.reserve(floor=9) == 9 + SEQ_RECOVERY_GAP + 1
    assert seq.recovered is not None and "missing" in seq.recovered


def test_schedule_is_fresh_when_absent(tmp_path: Path) -> None:
    sched = load_schedule(tmp_path)
    assert sched == Schedule()
    assert sched.reset_reason is None
    assert sched.kind("heartbeat") == KindSchedule()


def test_schedule_round_trips_through_the_file(tmp_path: Path) -> None:
    sched = Schedule().with_kind(
        "digest", KindSchedule(last_sent=100, next_due=200, consecutive_failures=2, last_error="x")
    )
    sched = Schedule(sched.license, sched.heartbeat, sched.digest, last_acked_root="ab" * 32)
    save_schedule(tmp_path, sched)
    loaded = load_schedule(tmp_path)
    assert loaded == sched
    assert loaded.digest.consecutive_failures == 2
    assert json.loads((tmp_path / "schedule.json").read_text())["v"] == 1
    assert (tmp_path / "schedule.json").stat().st_mode & 0o777 == 0o600


def test_corrupt_schedule_resets_to_fresh_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "schedule.json").write_text('{"heartbeat": {"last_sent": "yesterday"}}')
    sched = load_schedule(tmp_path)
    assert sched == Schedule()
    assert sched.reset_reason is not None and "last_sent" in sched.reset_reason


def test_truncated_schedule_resets_to_fresh(tmp_path: Path) -> None:
    (tmp_path / "schedule.json").write_text('{"heartbeat": {"last_se')
    assert load_schedule(tmp_path).reset_reason is not None


def test_schedule_kind_rejects_unknown_names() -> None:
    with pytest.raises(KeyError):
        Schedule().kind("credentials")
