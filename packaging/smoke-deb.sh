#!/usr/bin/env bash
# Smoke test of the Debian package on this machine (as root; systemd need not be running):
# install it, check the layout, run the sandbox self-test with the installed files, configure it
# as an operator would and use it as the fluxagent user, then purge it and check nothing is left.
#
#   packaging/smoke-deb.sh dist/fluxagent_<version>_<arch>.deb
set -euo pipefail
DEB=$(realpath "${1:?usage: smoke-deb.sh PATH.deb}")
# From /: `python -m`, `-c` and `-` put the working directory first on sys.path, and a source
# tree there would be tested instead of the installed files.
cd /
UNIT=/lib/systemd/system/fluxagent.service

fail() { echo "smoke-deb: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }
as_agent() { (cd / && runuser -u fluxagent -- "$@"); }
mode_of() { stat -c '%U:%G %a' "$1"; }

step "install"
dpkg-query -W fluxagent >/dev/null 2>&1 && fail "fluxagent is already installed here"
dpkg -i "$DEB"
fluxagent --version
getent passwd fluxagent | grep -q ':/usr/sbin/nologin$' || fail "no fluxagent system user"
[ "$(mode_of /etc/fluxagent)" = "root:fluxagent 750" ] || fail "/etc/fluxagent is $(mode_of /etc/fluxagent)"
[ "$(mode_of /var/lib/fluxagent)" = "fluxagent:fluxagent 700" ] || fail "/var/lib/fluxagent is $(mode_of /var/lib/fluxagent)"
[ -e /etc/fluxagent/fluxagent.toml ] && fail "the package must not ship a live config"
[ -s /var/lib/dpkg/info/fluxagent.conffiles ] && fail "no conffile expected: $(cat /var/lib/dpkg/info/fluxagent.conffiles)"
EXAMPLE=/usr/share/doc/fluxagent/examples/fluxagent.toml
[ -f "$EXAMPLE" ] || fail "no example config at $EXAMPLE"
if [ -d /run/systemd/system ] && systemctl is-active --quiet fluxagent; then fail "started without a config"; fi

step "installed files (dpkg -L fluxagent)"
dpkg -L fluxagent | grep -v '^/opt/fluxagent/'
echo "/opt/fluxagent/...: $(dpkg -L fluxagent | grep -c '^/opt/fluxagent/') entries;" \
    "$(find /opt/fluxagent -name '*.pyc' | wc -l) .pyc compiled by postinst;" \
    "Installed-Size $(dpkg-query -W -f='${Installed-Size}' fluxagent) KiB"

step "venv: own entry points only, stripped non-executable shared objects, Debian's libpq"
bins=$(cd /opt/fluxagent/bin && ls | tr '\n' ' ')
[ "$bins" = "docker-credential-fluxagent fluxagent python python3 python3.11 " ] || fail "stray entries in bin/: $bins"
sos=$(find /opt/fluxagent -type f -name '*.so*')
[ -n "$sos" ] || fail "no shared objects found"
for so in $sos; do
    [ -x "$so" ] && fail "$so is executable"
    readelf -S "$so" | grep -qE '\.(symtab|debug_)' && fail "$so is not stripped"
done
echo "$(echo "$sos" | wc -l) shared objects: stripped, mode 0644"
/opt/fluxagent/bin/python -c 'import psycopg; assert psycopg.pq.__impl__ == "python", psycopg.pq.__impl__; print("psycopg", psycopg.__version__, "on libpq", psycopg.pq.version())'
for unused in rich pygments markdown_it mdurl anyio pycparser psycopg_binary; do
    /opt/fluxagent/bin/python -c "import $unused" 2>/dev/null && fail "$unused ships but nothing uses it"
done

step "copyright: DEP-5, every bundled distribution with its licence"
COPYRIGHT=/usr/share/doc/fluxagent/copyright
head -n 1 "$COPYRIGHT" | grep -q '^Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' \
    || fail "copyright is not DEP-5"
for info in /opt/fluxagent/lib/python3.11/site-packages/*.dist-info; do
    grep -qF "${info#/}/*" "$COPYRIGHT" || fail "copyright does not cover $(basename "$info")"
done
echo "$(ls -d /opt/fluxagent/lib/python3.11/site-packages/*.dist-info | wc -l) distributions covered"

step "man pages and shell completions"
man -w fluxagent >/dev/null || fail "no man page fluxagent(1)"
for page in run status credentials-docker; do man -w "fluxagent-$page" >/dev/null || fail "no fluxagent-$page(1)"; done
man -w docker-credential-fluxagent >/dev/null || fail "no docker-credential-fluxagent(1)"
MANWIDTH=80 man fluxagent 2>/dev/null | head -n 8
got=$(bash -c 'source /usr/share/bash-completion/completions/fluxagent && complete -p fluxagent')
echo "$got"
[ "$got" = "complete -o default -F _fluxagent_completion fluxagent" ] || fail "bash completion: $got"
words=$(cd / && COMP_WORDS="fluxagent cre" COMP_CWORD=1 _FLUXAGENT_COMPLETE=complete_bash fluxagent)
[ "$words" = "credentials" ] || fail "bash completion of 'fluxagent cre' gave: $words"
got=$(zsh -fc 'fpath=(/usr/share/zsh/vendor-completions $fpath); autoload -U compinit; compinit -u -D; print -r -- $_comps[fluxagent]')
[ "$got" = _fluxagent ] || fail "zsh does not autoload the completion of fluxagent: '$got'"
fish_home=$(mktemp -d)   # fish keeps history and variables under $HOME
got=$(HOME=$fish_home fish -c 'complete -C"fluxagent cre"' | cut -f1)
rm -rf "$fish_home"
[ "$got" = credentials ] || fail "fish completion of 'fluxagent cre' gave: '$got'"
echo "zsh: _comps[fluxagent]=_fluxagent; fish: 'fluxagent cre' → credentials"
zcat /usr/share/doc/fluxagent/changelog.Debian.gz | head -n 1 | grep -qF "($(dpkg-query -W -f='${Version}' fluxagent))" \
    || fail "changelog.Debian.gz does not name this version"

step "unit: systemd-analyze"
out=$(systemd-analyze verify --man=no "$UNIT" /lib/systemd/system/fluxagent-metrics.service \
    /lib/systemd/system/fluxagent-metrics.timer 2>&1) || fail "verify: $out"
[ -z "$out" ] || fail "verify warned: $out"
systemd-analyze security --offline=true --no-pager "$UNIT" | tail -n 1

step "sandbox self-test with the installed python, packages and unit"
/opt/fluxagent/bin/python -m fluxagent.diagnostics.selftest --unit "$UNIT"

step "configure as an operator: config from the example (root), identity as fluxagent"
WORK=$(mktemp -d)
chmod 0755 "$WORK"
/opt/fluxagent/bin/python - "$WORK" <<'PY'
import base64, sys, time, tomllib
from pathlib import Path
import nacl.signing, tomli_w
from fluxagent.testing import sample
from fluxagent.testing.licenses import make_license

work = Path(sys.argv[1])
db = sample.write_sqlite(work / "fluxbilling.db", sample.generate(clients=300, servers=20))
db.chmod(0o644)
keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
now = int(time.time())
(work / "license.json").write_bytes(make_license(keys[0], license_id="FB-SMOKE-0001",
    bound_domain="billing.example.com", issued_at=now - 86400, expires_at=now + 365 * 86400))
doc = tomllib.loads(Path("/usr/share/doc/fluxagent/examples/fluxagent.toml").read_text())
doc["server"]["vendor_keys"] = [base64.b64encode(bytes(k.verify_key)).decode() for k in keys]
doc["platform"]["database"] = f"sqlite:///{db}"
(work / "fluxagent.toml").write_text(tomli_w.dumps(doc))
PY
install -o root -g fluxagent -m 0640 "$WORK/fluxagent.toml" /etc/fluxagent/fluxagent.toml
install -o root -g fluxagent -m 0640 "$WORK/license.json" /etc/fluxagent/license.json
as_agent fluxagent init
[ "$(mode_of /var/lib/fluxagent/signing.key)" = "fluxagent:fluxagent 600" ] || fail "signing.key is not private"
as_agent fluxagent preview > /dev/null
as_agent fluxagent status
as_agent fluxagent validate --offline
command -v docker-credential-fluxagent > /dev/null || fail "docker-credential-fluxagent is not on PATH"

step "purge: what the package and the agent made goes, the operator's files stay"
LIST=$(dpkg -L fluxagent)
out=$(dpkg --purge fluxagent)
echo "$out"
rm -rf "$WORK"
dpkg-query -W fluxagent >/dev/null 2>&1 && fail "still registered with dpkg"
echo "$out" | grep -q "/etc/fluxagent/license.json" || fail "purge did not say it kept the license file"
[ -e /etc/fluxagent/approved-schema ] && fail "purge left the package's approved-schema"
[ "$(ls -A /etc/fluxagent | tr '\n' ' ')" = "fluxagent.toml license.json " ] \
    || fail "purge left more than the operator's files: $(ls -A /etc/fluxagent)"
for kept in /etc/fluxagent/fluxagent.toml /etc/fluxagent/license.json; do
    [ -f "$kept" ] || fail "purge deleted the operator's $kept"
    [ "$(stat -c %G "$kept")" = root ] || fail "$kept kept with group $(stat -c %G "$kept")"
done
rm -rf /etc/fluxagent   # the operator's turn
left=""
for p in $LIST /etc/fluxagent /var/lib/fluxagent /var/cache/fluxagent \
        /etc/systemd/system/multi-user.target.wants/fluxagent.service \
        /var/lib/systemd/deb-systemd-helper-enabled/fluxagent.service; do
    case "$p" in  # shared directories like /usr/lib/sysusers.d stay, whatever is ours must be gone
        *fluxagent*) if [ -e "$p" ] || [ -L "$p" ]; then left="$left $p"; fi ;;
    esac
done
[ -z "$left" ] || fail "left behind after purge:$left"
getent passwd fluxagent >/dev/null && fail "user fluxagent left behind"
getent group fluxagent >/dev/null && fail "group fluxagent left behind"
stray=$(find /etc /opt /var/lib /var/cache /usr/bin /usr/lib /lib/systemd /usr/share -name '*fluxagent*' \
    -not -path '/var/lib/dpkg/*' -not -path '/var/cache/man/*' 2>/dev/null || true)
[ -z "$stray" ] || fail "left behind after purge: $stray"
echo "smoke-deb: OK"
