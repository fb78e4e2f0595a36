"""kill -9 trials of `fluxagent run`: start it on a state dir with work to do, kill it at a random
moment, then check every state file. Used by the test suite and by bench/soak_kill.py."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentkit import Daemon

from fluxagent.config import Config
from fluxagent.delivery import Deps, Engine
from fluxagent.kinds import SCHEDULED
from fluxagent.statedir import identity, state
from fluxagent.statedir.ledger import Ledger
from fluxagent.statedir.spool import Spool
from fluxagent.testing.server import ReferenceServer
from fluxagent.transport import Plain
from fluxagent.wire.http import HttpResponse, TransportError

MAX_LINE_CUE = 10  # log lines of a busy start: opened, started, 3 spooled, then one per message sent


def _offline(url: str, body: bytes, *, deadline: float) -> HttpResponse:
    raise TransportError("connect", url, "offline: this engine only produces")


def backlog(cfg: Config, rng: random.Random, heartbeats: int) -> None:
    """Queue messages as a run during an outage would (license, digest, heartbeats), timed a day and
    more ago so that every kind is due again when `run` starts; this also reopens the state after a kill."""
    ident = identity.load(cfg.instance.state_dir)
    t = time.time() - cfg.schedule.digest - cfg.schedule.jitter - 3600
    engine = Engine(cfg, ident, Deps(Plain(_offline), lambda: t, rng=rng))
    engine.produce(list(SCHEDULED), t)
    for i in range(heartbeats):
        engine.produce(["heartbeat"], t + i)


@dataclass
class Trial:
    """What one trial did: when it killed, what, and how far the run had got."""

    cue_lines: int
    delay: float
    lines_seen: int
    exit_code: int  # the supervisor's: -9 when it was the target, 0 after its SIGTERM when a worker was
    target: str = "supervisor"
    worker_killed: bool = False


def kill_trial(config_path: Path, rng: random.Random, env: dict[str, str], target: str = "supervisor") -> Trial:
    """Start `run`, SIGKILL it at a random moment (after a random log line, or during start-up).

    target "supervisor" kills the daemon (its worker dies with it); "worker" kills the worker running
    at that moment, then stops the daemon with SIGTERM, which must still exit 0.
    """
    d = Daemon(config_path, env=env)
    killed = False
    try:
        cue = rng.randint(0, MAX_LINE_CUE)
        delay = rng.uniform(0, 0.012) if cue else rng.uniform(0.05, 0.6)
        end = time.monotonic() + 3  # a run that logs fewer lines is idle by then: kill it there
        while len(d.lines) < cue and time.monotonic() < end and d.proc.poll() is None:
            time.sleep(0.0005)
        time.sleep(delay)
        seen = len(d.lines)
        if target == "worker":
            for pid in d.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed = True
            d.proc.send_signal(signal.SIGTERM)
        else:
            d.proc.kill()
        code = d.wait(30)
    finally:
        d.stop()
    return Trial(cue, delay, seen, code, target, killed)


def check_state(cfg: Config) -> dict[str, Any]:
    """Assert every state file is valid after a crash; return a summary. Changes nothing on disk."""
    sd = cfg.instance.state_dir
    identity.load(sd)
    seq_text = (sd / "seq").read_text() if (sd / "seq").exists() else "0\n"
    assert seq_text.endswith("\n") and seq_text[:-1].isdigit(), f"seq file holds {seq_text!r}"
    seq = int(seq_text)
    spooled = []
    for p in sorted((sd / "spool" / "new").iterdir()):
        doc = json.loads(p.read_bytes())  # whole: written to tmp/ and renamed
        assert p.name == f"{doc['seq']:020d}-{doc['kind']}.json"
        spooled.append(doc["seq"])
    assert not list((sd / "spool" / "bad").glob("*")), "a spool entry was corrupt"
    ledger = Ledger(sd / "ledger", readonly=True)
    res = ledger.verify()
    assert res.ok, f"ledger chain broken: {res}"
    in_ledger = [e.seq for e in ledger.entries() if e.seq is not None]
    assert max([0, *spooled, *in_ledger]) <= seq, "a seq on record is above the persisted counter"
    schedule = state.load_schedule(sd)
    assert schedule.reset_reason is None, schedule.reset_reason
    state.read_json(sd / "license-status.json")  # raises if torn
    return {"seq": seq, "spooled": len(spooled), "ledger": res.checked}


def reopen(cfg: Config) -> Spool:
    """Open the spool as the next run does and assert it found nothing corrupt."""
    spool = Spool(cfg.instance.state_dir / "spool", cfg.spool.max_messages, cfg.spool.max_bytes)
    assert spool.opened.quarantined == () and spool.counters()["corrupt"] == 0
    return spool


def check_server_side(server: ReferenceServer) -> dict[str, int]:
    """Assert the server saw seqs first in increasing order, resends only as the exact same request,
    and never refused anything (no seq reuse, no replay). Returns counts."""
    bodies: dict[int, set[bytes]] = defaultdict(set)
    first: list[int] = []
    for r in server.received:
        declared = next((int(v) for k, v in r.headers.items() if k.lower() == "content-length"), 0)
        if r.status == 0 or (r.status == 400 and len(r.body) < declared):
            continue  # the agent was killed mid-request: the body or the answer never completed
        assert r.status == 200, f"server answered {r.status} to {r.endpoint}"
        seq = json.loads(base64.b64decode(json.loads(r.body)["payload"]))["seq"]
        if seq not in bodies:
            first.append(seq)
        bodies[seq].add(r.body)
    assert first == sorted(first), "seq went backwards"
    resent = [s for s, b in bodies.items() if len(b) > 1]
    assert not resent, f"seq {resent} was sent with different bodies"
    accepted = sum(1 for r in server.received if r.status == 200)
    return {"messages": len(first), "requests": accepted, "resent": accepted - len(first)}


@dataclass
class Soak:
    """Running totals of a series of trials."""

    trials: list[Trial] = field(default_factory=list)

    def kills_mid_work(self) -> int:
        return sum(1 for t in self.trials
                   if 0 < t.lines_seen < MAX_LINE_CUE and (t.exit_code == -9 or t.worker_killed))
