#!/usr/bin/env bash
# The two-user deployment, end to end on the installed Debian package (as root; systemd need not
# run): the daemon runs as `fluxagent` (started directly, as the unit would), and root operates
# beside it — init, the docker helper, `credentials apt` and `--cleanup`, `validate`, `status` —
# without ever taking the service's keys or files over. Records and links planted in the state
# directory by the service user must not make root touch anything outside it.
# The licensing server is the reference server on 127.0.0.1. See packaging/two_user_check.py.
#
#   packaging/two-user-deb.sh dist/fluxagent_<version>_<arch>.deb
set -euo pipefail
DEB=${1:?usage: two-user-deb.sh PATH.deb}
cd "$(dirname "$0")/.."

fail() { echo "two-user-deb: FAIL: $*" >&2; exit 1; }

dpkg-query -W fluxagent >/dev/null 2>&1 && fail "fluxagent is already installed here"
[ -e /etc/fluxagent/fluxagent.toml ] && fail "/etc/fluxagent/fluxagent.toml exists: not a clean machine"
WORK=$(mktemp -d)
chmod 0755 "$WORK"   # the service user reads the platform database in here
cleanup() {
    dpkg --purge fluxagent >/dev/null 2>&1 || true
    rm -rf /etc/fluxagent "$WORK"
}
trap cleanup EXIT

echo "== install"
dpkg -i "$DEB" >/dev/null
/opt/fluxagent/bin/python packaging/two_user_check.py "$WORK"
echo "two-user-deb: OK"
