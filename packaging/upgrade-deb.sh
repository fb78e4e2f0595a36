#!/usr/bin/env bash
# Upgrade in place, on this machine (as root): build 0.1.0 — the package of the last commit before
# this release's changes — install it, configure it as an operator would, run a cycle against a
# reference server on loopback, spool a cycle while the server is unreachable, then install the
# new package over it and check that the instance carries on: same identity, seq continues (never
# reused), the ledger chain verifies across the upgrade, the spooled messages are delivered, the
# license state and the operator's config and license file are untouched, 0.1.0's conffile is gone.
#
#   packaging/upgrade-deb.sh NEW.deb [PYTHON]    (PYTHON runs the reference server; default .venv/bin/python)
set -euo pipefail
NEW=$(realpath "${1:?usage: upgrade-deb.sh NEW.deb [PYTHON]}")
cd "$(dirname "$0")/.."
PY=${2:-$PWD/.venv/bin/python}   # not resolved: a venv's python is a symlink
OLD_COMMIT=7bde027   # 0.1.0: the commit before the layout reshape
STATE=/var/lib/fluxagent

fail() { echo "upgrade-deb: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }
as_agent() { (cd / && runuser -u fluxagent -- "$@"); }
sha() { sha256sum "$1" | cut -d' ' -f1; }
ledger() {  # JSON facts of the ledger: sent seqs, max seq, entries
    /usr/bin/python3 - "$STATE/ledger" <<'PY'
import json, pathlib, sys
entries = [json.loads(line) for seg in sorted(pathlib.Path(sys.argv[1]).glob("*.jsonl"))
           for line in seg.read_text().splitlines() if line.strip()]
seqs = [e["seq"] for e in entries if e.get("seq") is not None]
sent = [e["seq"] for e in entries if e["event"] == "sent"]
settled = [e["seq"] for e in entries if e["outcome"] in ("delivered", "superseded")]
print(json.dumps({"entries": len(entries), "max_seq": max(seqs, default=0), "sent": sent, "settled": settled}))
PY
}
quiet() {  # run a command, showing its output only if it fails
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    [ "$rc" = 0 ] || echo "$out" >&2
    return "$rc"
}
field() { /usr/bin/python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

dpkg-query -W fluxagent >/dev/null 2>&1 && fail "fluxagent is already installed here"
tmp=$(mktemp -d)
chmod 0755 "$tmp"
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    if dpkg-query -W fluxagent >/dev/null 2>&1; then dpkg --purge fluxagent >/dev/null 2>&1 || true; fi
    rm -rf /etc/fluxagent
    git worktree remove --force "$tmp/old" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

step "build 0.1.0 from commit $OLD_COMMIT"
git cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null || fail "commit $OLD_COMMIT is not in this clone (a shallow clone?)"
git worktree add --detach "$tmp/old" "$OLD_COMMIT" >/dev/null 2>&1
OLD=$(bash "$tmp/old/packaging/build-deb.sh" "$tmp/olddist" 2>/dev/null | tail -n 1)
echo "$(basename "$OLD") → $(basename "$NEW")"

step "reference server on loopback, as of 0.1.0"
# The server 0.1.0 was released against: the vendor's server is not upgraded with the agent, so the
# new package must carry on against it.
(cd "$tmp/old" && PYTHONPATH="$tmp/old" exec "$PY" -m fluxagent.testing.server --port 0) > "$tmp/server.json" &
server_pid=$!
for _ in $(seq 100); do [ -s "$tmp/server.json" ] && break; sleep 0.1; done
[ -s "$tmp/server.json" ] || fail "the reference server did not start"
head -n 1 "$tmp/server.json"

step "install 0.1.0 and configure it as an operator"
dpkg -i "$OLD" >/dev/null
[ -f /etc/fluxagent/fluxagent.toml.example ] || fail "0.1.0 did not ship its conffile example"
# sample database, a license file signed the 0.1.0 way, config from 0.1.0's example (0.1.0's own code)
(cd / && exec /opt/fluxagent/bin/python - "$tmp") <<'PY'  # from /: the installed fluxagent, not this tree
import base64, json, sys, time, tomllib
from pathlib import Path
import nacl.signing, tomli_w
from fluxagent.testing import sample
from fluxagent.testing.licenses import make_license

tmp = Path(sys.argv[1])
server = json.loads((tmp / "server.json").read_text().splitlines()[0])
db = sample.write_sqlite(tmp / "fluxbilling.db", sample.generate(clients=200, servers=10))
db.chmod(0o644)
key = nacl.signing.SigningKey.generate()
now = int(time.time())
(tmp / "license.json").write_bytes(make_license(key, license_id="FB-UPGRADE-0001",
    bound_domain="billing.example.com", issued_at=now - 86400, expires_at=now + 365 * 86400))
doc = tomllib.loads(Path("/etc/fluxagent/fluxagent.toml.example").read_text())
doc["server"]["url"] = server["url"]
doc["server"]["vendor_keys"] = [*server["vendor_keys"], base64.b64encode(bytes(key.verify_key)).decode()]
doc["platform"]["database"] = f"sqlite:///{db}"
(tmp / "fluxagent.toml").write_text(tomli_w.dumps(doc))
doc["server"]["url"] = "http://127.0.0.1:9"  # the discard port: nothing answers, the cycle is spooled
(tmp / "offline.toml").write_text(tomli_w.dumps(doc))
PY
install -o root -g fluxagent -m 0640 "$tmp/fluxagent.toml" /etc/fluxagent/fluxagent.toml
install -o root -g fluxagent -m 0640 "$tmp/license.json" /etc/fluxagent/license.json
install -o root -g fluxagent -m 0640 "$tmp/offline.toml" "$tmp/offline.conf.toml"
as_agent fluxagent init >/dev/null

step "0.1.0: one cycle delivered, one cycle spooled while the server is unreachable"
quiet as_agent fluxagent run --once || fail "0.1.0 run --once failed"
state_before=$(field "$(cat "$STATE/license-status.json")" state)
if [ "$state_before" != valid ]; then
    as_agent fluxagent status >&2 || true
    fail "0.1.0's license state is $state_before"
fi
code=0
as_agent fluxagent --config "$tmp/offline.conf.toml" run --once >/dev/null 2>&1 || code=$?
[ "$code" = 69 ] || fail "the offline cycle exited $code, not 69"
before=$(ledger)
spooled=$(ls "$STATE/spool/new" | wc -l)
[ "$spooled" -ge 3 ] || fail "expected the cycle in the spool, found $spooled messages"
as_agent fluxagent log --verify >/dev/null || fail "0.1.0's ledger does not verify"
instance=$(field "$(cat "$STATE/identity.json")" instance_id)
cfg_sha=$(sha /etc/fluxagent/fluxagent.toml)
lic_sha=$(sha /etc/fluxagent/license.json)
key_sha=$(sha "$STATE/signing.key")
spooled_seqs=$(cd "$STATE/spool/new" && ls | sed 's/-.*//; s/^0*//' | tr '\n' ' ')
echo "instance $instance; ledger $before; spooled seqs: $spooled_seqs; license $state_before"

step "upgrade: install the new package over 0.1.0"
dpkg -i "$NEW" >/dev/null
[ "$(dpkg-query -W -f='${Version}' fluxagent)" != 0.1.0-1 ] || fail "still 0.1.0"
[ -e /etc/fluxagent/fluxagent.toml.example ] && fail "0.1.0's conffile example is still there"
[ "$(sha /etc/fluxagent/fluxagent.toml)" = "$cfg_sha" ] || fail "the operator's config changed"
[ "$(sha /etc/fluxagent/license.json)" = "$lic_sha" ] || fail "the operator's license file changed"
[ "$(sha "$STATE/signing.key")" = "$key_sha" ] || fail "the signing key changed"
[ "$(field "$(cat "$STATE/identity.json")" instance_id)" = "$instance" ] || fail "the instance identity changed"
as_agent fluxagent validate --offline | grep -E "^ok +license file" \
    || fail "the license file issued by 0.1.0's tools does not verify"
as_agent fluxagent log --verify >/dev/null || fail "the ledger does not verify after the upgrade"

step "new package: one cycle delivers the spool, seq continues"
quiet as_agent fluxagent run --once || fail "run --once after the upgrade failed"
after=$(ledger)
echo "ledger $after"
[ "$(ls "$STATE/spool/new" | wc -l)" = 0 ] || fail "the spooled messages were not delivered"
/usr/bin/python3 - "$before" "$after" "$spooled_seqs" <<'PY' || fail "seq did not continue, or a spooled message was lost"
import json, sys
before, after = (json.loads(a) for a in sys.argv[1:3])
spooled = [int(s) for s in sys.argv[3].split()]
missing = [s for s in spooled if s not in after["settled"]]
assert not missing, f"spooled before the upgrade, neither delivered nor superseded after it: {missing}"
new_sent = after["sent"][len(before["sent"]):]
assert new_sent, "nothing was sent after the upgrade"
assert len(set(after["sent"])) == len(after["sent"]), f"a seq was sent twice: {after['sent']}"
assert after["max_seq"] > before["max_seq"], (before, after)
assert sorted(after["sent"]) == after["sent"], f"sent out of order: {after['sent']}"
PY
as_agent fluxagent log --verify || fail "the ledger chain does not verify across the upgrade"
state_after=$(field "$(cat "$STATE/license-status.json")" state)
[ "$state_after" = "$state_before" ] || fail "license state went from $state_before to $state_after"
grep -q '^fluxagent_deliveries_total{kind="license",outcome="delivered"} [1-9]' "$STATE/metrics.prom" \
    || fail "metrics.prom lacks the delivery counters"
as_agent fluxagent status | head -n 3
echo "upgrade-deb: OK"
