"""What hostile server answers cost the agent, measured side by side in one run; prints figures and ratios.

    python bench/bench_hostile.py [--cap 1048576] [--deadline 2]

Each answer comes from the reference server (loopback HTTP) through the real transport and the
receipt check. For each: the outcome, wall time, CPU time and peak traced Python memory (client and
the in-process server together), with the memory as a ratio of the honest answer's and of the
response cap. Budgets: every hostile answer refused; peak memory ≤ 8 × the cap (decoding a
cap-sized JSON body is the largest cost, and it is linear in the cap); the slow drip ends within
the deadline + 1 s; a cap-sized envelope of junk signatures costs ≤ 100 ms of CPU, shown beside
what checking each of its signatures against both pinned keys would have cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from collections.abc import Callable

import nacl.signing

from fluxagent.config import ServerConfig
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.transport import HttpxTransport, send
from fluxagent.wire import messages
from fluxagent.wire.receipts import Delivered, classify


def junk_signatures(size: int) -> bytes:
    """Return an envelope of about size bytes holding nothing but junk signatures."""
    entry = b'{"keyid":"","sig":"' + b"A" * 86 + b'=="}'
    head = b'{"payloadType":"application/vnd.fluxagent.receipt.v1+json","payload":"e30=","signatures":['
    return head + b",".join([entry] * (size // (len(entry) + 1))) + b"]}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cap", type=int, default=1 << 20, help="server.max_response_bytes (default 1 MiB)")
    p.add_argument("--deadline", type=float, default=2.0, help="per-request deadline for the slow drip")
    args = p.parse_args()
    cap = args.cap
    key = nacl.signing.SigningKey.generate()
    iid = "6f1c0e1d-9a8b-4c7d-8e6f-1a2b3c4d5e6f"
    cases: list[tuple[str, Callable[[], Fault | None]]] = [
        ("honest receipt (baseline)", lambda: None),
        ("Content-Length 1 GiB", lambda: Fault.oversized(1 << 30)),
        ("chunked 1 GiB", lambda: Fault.oversized(1 << 30, chunked=True)),
        ("gzip bomb 1 GiB", lambda: Fault.bomb(1 << 30)),
        ("deeply nested JSON", lambda: Fault.wrong_shape(b"[" * (cap - 1))),
        ("junk signatures, cap-sized", lambda: Fault.wrong_shape(junk_signatures(cap - 64))),
        ("receipt by an unpinned key", lambda: Fault.receipt("unpinned")),
        ("slow drip", lambda: Fault.drip(1 << 20, chunk=64, interval=0.05)),
    ]
    rows = []
    with ReferenceServer() as server:
        cfg = ServerConfig(url=server.url, vendor_keys=tuple(server.vendor_keys), connect_timeout=2.0,
                           read_timeout=5.0, max_response_bytes=cap)
        with HttpxTransport(cfg, env={}) as transport:
            msg = messages.build_license("billing.example.com", None, "unlicensed", bytes(key.verify_key))
            sealed = messages.seal(msg, signing_key=key, iid=iid, aud="127.0.0.1", seq=1, now=int(time.time()),
                                   nonce=os.urandom(16))
            for name, make in cases:
                fault = make()
                if fault is not None:
                    server.inject(fault)
                deadline = args.deadline if name == "slow drip" else 30.0
                tracemalloc.start()
                wall, cpu = time.perf_counter(), time.process_time()
                response = send(transport, server.url + sealed.endpoint, sealed.envelope, deadline=deadline)
                outcome = classify(sealed, response, cfg.vendor_keys, time.time(), 3600)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                what = "delivered" if isinstance(outcome, Delivered) else outcome.reason.split(":")[0]
                rows.append((name, what, wall, cpu, peak, isinstance(outcome, Delivered)))
    base = rows[0][4]
    print(f"== hostile answers through the transport and the receipt check (cap {cap} bytes)")
    print(f"  {'answer':<28} {'outcome':<12} {'wall':>8} {'cpu':>8} {'peak mem':>10} {'×honest':>8} {'×cap':>6}")
    ok = rows[0][5]
    for name, what, wall, cpu, peak, delivered in rows:
        print(f"  {name:<28} {what:<12} {wall:7.3f}s {cpu:7.3f}s {peak / 2**20:8.2f}MB {peak / base:7.1f}× "
              f"{peak / cap:5.2f}×")
        if name != rows[0][0]:
            ok &= not delivered and peak <= 8 * cap
    drip = rows[-1]
    sigs = next(r for r in rows if r[0].startswith("junk"))
    ok &= drip[2] <= args.deadline + 1 and sigs[3] <= 0.1
    n_sigs = junk_signatures(cap - 64).count(b'"sig"')
    vk, signed = key.verify_key, key.sign(b"x" * 200)
    t = time.process_time()
    for _ in range(200):
        vk.verify(signed)
    per_verify = (time.process_time() - t) / 200
    print(f"  slow drip ended after {drip[2]:.2f}s for a {args.deadline:g}s deadline "
          f"({'meets' if drip[2] <= args.deadline + 1 else 'MISSES'} budget ≤ deadline + 1 s)")
    unbounded = n_sigs * len(cfg.vendor_keys) * per_verify
    print(f"  junk signatures ({n_sigs}) cost {sigs[3] * 1000:.1f} ms CPU; checking each against "
          f"{len(cfg.vendor_keys)} keys would cost {unbounded * 1000:.0f} ms ({unbounded / sigs[3]:.0f}×) "
          f"({'meets' if sigs[3] <= 0.1 else 'MISSES'} budget ≤ 100 ms)")
    print("ALL BUDGETS MET" if ok else "SOME BUDGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
