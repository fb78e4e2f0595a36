#!/usr/bin/env bash
# Build the Debian package: a venv under /opt/fluxagent made with Debian's own /usr/bin/python3,
# filled from PyPI, bytecode precompiled, wrapped with dpkg-deb together with the systemd unit,
# sysusers.d/tmpfiles.d entries, the example config (a conffile) and the maintainer scripts.
#
#   packaging/build-deb.sh [OUTDIR]        → OUTDIR/fluxagent_<version>_<arch>.deb (default dist/)
#
# Needs: python3 with venv (Debian: python3-venv), dpkg-dev is not needed (dpkg-deb is in dpkg).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
OUT=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
PY=/usr/bin/python3
PREFIX=/opt/fluxagent

VERSION=$($PY -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
PYMINOR=$($PY -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ARCH=$(dpkg --print-architecture)
DEBVERSION="$VERSION-1"

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
ROOT=$BUILD/root
VENV=$ROOT$PREFIX

# 1. the venv, bound to Debian's python3 (the package depends on that minor version)
$PY -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$BUILD/wheel" "$SRC"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-compile \
    "$(ls "$BUILD"/wheel/fluxagent-*.whl)[postgres,mysql]"
"$VENV/bin/python" -m pip uninstall -q -y pip setuptools   # nothing installs into it at run time
rm -f "$VENV"/bin/activate* "$VENV"/bin/Activate.ps1
rm -f "$VENV"/lib/python*/site-packages/*.dist-info/direct_url.json   # names the build machine's paths
# console scripts (#! line) and pyvenv.cfg name the build path: point them at the installed prefix
grep -rlI -- "$VENV" "$VENV/bin" "$VENV/pyvenv.cfg" | xargs -r sed -i "s#$VENV#$PREFIX#g"
if grep -rlI -- "$BUILD" "$ROOT"; then
    echo "build-deb: the files above still name the build directory" >&2
    exit 1
fi

# 2. bytecode: the service runs with a read-only /opt, so nothing could be cached later
"$VENV/bin/python" -m compileall -q -j 0 -s "$ROOT" -p / "$VENV/lib"

# 3. the rest of the layout
for unit in fluxagent.service fluxagent-metrics.service fluxagent-metrics.timer; do
    install -D -m 0644 "packaging/systemd/$unit" "$ROOT/lib/systemd/system/$unit"
done
install -D -m 0644 packaging/sysusers.d/fluxagent.conf "$ROOT/usr/lib/sysusers.d/fluxagent.conf"
install -D -m 0644 packaging/tmpfiles.d/fluxagent.conf "$ROOT/usr/lib/tmpfiles.d/fluxagent.conf"
install -D -m 0644 fluxagent.example.toml "$ROOT/etc/fluxagent/fluxagent.toml.example"
install -D -m 0644 packaging/systemd/ip-allowlist.conf.example \
    "$ROOT/usr/share/doc/fluxagent/examples/ip-allowlist.conf"
install -D -m 0644 packaging/prometheus/fluxagent-alerts.yml \
    "$ROOT/usr/share/doc/fluxagent/examples/fluxagent-alerts.yml"
install -D -m 0644 README.md "$ROOT/usr/share/doc/fluxagent/README.md"
install -D -m 0644 docs/PROTOCOL.md "$ROOT/usr/share/doc/fluxagent/PROTOCOL.md"
install -D -m 0644 docs/OPERATOR.md "$ROOT/usr/share/doc/fluxagent/OPERATOR.md"
install -D -m 0644 docs/CONFIG.md "$ROOT/usr/share/doc/fluxagent/CONFIG.md"
mkdir -p "$ROOT/usr/bin"
# every console script of the project on PATH (fluxagent, and the docker credential helper docker looks up)
for script in $($PY -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["scripts"])'); do
    ln -s "$PREFIX/bin/$script" "$ROOT/usr/bin/$script"
done

# 4. control files
mkdir -p "$ROOT/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$ROOT/DEBIAN/"
echo /etc/fluxagent/fluxagent.toml.example > "$ROOT/DEBIAN/conffiles"
NEXT_MINOR=$($PY -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
cat > "$ROOT/DEBIAN/control" <<EOF
Package: fluxagent
Version: $DEBVERSION
Architecture: $ARCH
Maintainer: FluxBilling <support@fluxbilling.example>
Installed-Size: $(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
Depends: python3 (>= $PYMINOR~), python3 (<< $NEXT_MINOR~), libc6, adduser | systemd
Section: admin
Priority: optional
Homepage: https://fluxbilling.example
Description: FluxBilling licensing and telemetry agent
 fluxagent is the licensing and telemetry agent of the FluxBilling Self-Hosted
 Edition. It sends only what clause 08 of the privacy policy allows (license
 validation, aggregate counts, keyed hashes of server and network identifiers,
 update credential requests), shows it beforehand (fluxagent preview) and keeps
 a hash-chained ledger of what was sent (fluxagent log --verify).
EOF

DEB="$OUT/fluxagent_${DEBVERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz -z1 --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
