#!/usr/bin/env bash
# Build the Debian package for one Debian release: a venv under /opt/fluxagent made with that
# release's own python3.X, filled from packaging/requirements.lock (pinned, hash-checked, no
# dependency resolution), wrapped with dpkg-deb together with the systemd units, sysusers.d and
# tmpfiles.d entries, man pages and shell completions generated from the CLI, a DEP-5 copyright
# file generated from the bundled distributions' metadata, and the maintainer scripts.
#
#   packaging/build-deb.sh [--release CODENAME] [OUTDIR]
#       → OUTDIR/fluxagent_<version>-1~deb<N>u1_<arch>.deb (default OUTDIR: dist/)
#
# CODENAME defaults to this machine's release and must be this machine's release: the venv is
# bound to the interpreter it was made with, so a trixie package is built on trixie (a container
# or chroot does; docs/OPERATOR.md). Reproducible: SOURCE_DATE_EPOCH (default: the last commit's
# date) is every file's mtime, the changelog's date and the man pages' date; two builds of one
# commit give the same .deb bytes.
#
# Needs: python3.X-venv of the target release, dpkg, binutils (strip), git (for the default date).
# Network: only PyPI, for the files pinned in packaging/requirements.lock and build-requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD

RELEASE=""
OUTARG=dist
while (($#)); do
    case "$1" in
        --release) RELEASE=${2:?--release needs a codename}; shift 2 ;;
        --release=*) RELEASE=${1#--release=}; shift ;;
        -*) echo "build-deb: unknown option $1" >&2; exit 2 ;;
        *) OUTARG=$1; shift ;;
    esac
done
HOST_RELEASE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
RELEASE=${RELEASE:-$HOST_RELEASE}
case "$RELEASE" in  # the release's own python3: the package depends on exactly that interpreter
    bookworm) DEBNUM=12 PYV=3.11 ;;
    trixie) DEBNUM=13 PYV=3.13 ;;
    *) echo "build-deb: unknown release '$RELEASE' (bookworm, trixie)" >&2; exit 2 ;;
esac
if [ "$RELEASE" != "$HOST_RELEASE" ]; then
    echo "build-deb: this machine runs '$HOST_RELEASE'; build the $RELEASE package on $RELEASE" \
        "(its venv must be made with $RELEASE's python$PYV: see docs/OPERATOR.md)" >&2
    exit 2
fi
PY=/usr/bin/python$PYV
PREFIX=/opt/fluxagent

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || stat -c %Y pyproject.toml)}
export TZ=UTC LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0 PIP_DISABLE_PIP_VERSION_CHECK=1
umask 022

VERSION=$($PY -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
DEBVERSION="$VERSION-1~deb${DEBNUM}u1"
OUT=$(mkdir -p "$OUTARG" && cd "$OUTARG" && pwd)

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
ROOT=$BUILD/root
VENV=$ROOT$PREFIX
SITE_REL=lib/python$PYV/site-packages
DOC=$ROOT/usr/share/doc/fluxagent

# 0. the sources as committed or about to be (tracked and new files, nothing ignored): a stale
#    build/ directory in the work tree must not leak old modules into the wheel
mkdir "$BUILD/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z -c -o --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf - | tar -xf - -C "$BUILD/src"
else
    cp -a . "$BUILD/src"
fi

# 1. the venv: the locked distributions exactly (hash-checked, wheels only, no resolver), then fluxagent
$PY -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --no-compile --require-hashes --no-deps --only-binary :all: \
    -r packaging/requirements.lock
# fluxagent's own wheel, built by the locked backend (no build isolation: nothing unpinned is fetched)
$PY -m venv "$BUILD/tools"
"$BUILD/tools/bin/python" -m pip install -q --require-hashes --no-deps --only-binary :all: \
    -r packaging/build-requirements.lock
"$BUILD/tools/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$BUILD/wheel" "$BUILD/src"
"$VENV/bin/python" -m pip install -q --no-compile --no-deps "$BUILD"/wheel/fluxagent-*.whl

# 2. generated from the installed CLI and metadata (before the venv's paths are rewritten)
mkdir -p "$BUILD/man" "$ROOT/usr/share/man/man1"
"$VENV/bin/python" packaging/manpages.py "$BUILD/man" >/dev/null
for page in "$BUILD"/man/*.1; do
    gzip -9n < "$page" > "$ROOT/usr/share/man/man1/$(basename "$page").gz"
done
echo ".so man1/fluxagent-credentials-docker.1" | gzip -9n > "$ROOT/usr/share/man/man1/docker-credential-fluxagent.1.gz"
complete() { _FLUXAGENT_COMPLETE="source_$1" "$VENV/bin/python" "$VENV/bin/fluxagent"; }
install -d "$ROOT/usr/share/bash-completion/completions" "$ROOT/usr/share/zsh/vendor-completions" \
    "$ROOT/usr/share/fish/vendor_completions.d"
complete bash > "$ROOT/usr/share/bash-completion/completions/fluxagent"
# zsh autoloads _fluxagent from its fpath: `#compdef` must be the first line, and the file's body
# (run on the first Tab) must complete too, not only define the function for the next Tab
{ complete zsh | sed '/./,$!d'; echo '_fluxagent_completion "$@"'; } > "$ROOT/usr/share/zsh/vendor-completions/_fluxagent"
complete fish > "$ROOT/usr/share/fish/vendor_completions.d/fluxagent.fish"
install -d "$DOC"
"$VENV/bin/python" packaging/copyright.py "$VENV/$SITE_REL" "$PREFIX/$SITE_REL" > "$DOC/copyright"

# 3. nothing installs into the venv at run time; no entry point but fluxagent's own
"$VENV/bin/python" -m pip uninstall -q -y pip setuptools 2>/dev/null || true
own_scripts=$($PY -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["scripts"])')
for f in "$VENV"/bin/*; do
    name=$(basename "$f")
    case " $own_scripts " in *" $name "*) continue ;; esac
    case "$name" in python|python3|"python$PYV") continue ;; esac
    rm -f "$f"
done
rmdir "$VENV/include/python$PYV" "$VENV/include"   # no C headers: nothing is compiled against it
rm -f "$VENV"/$SITE_REL/*.dist-info/direct_url.json   # names the build machine's paths
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +   # compiled by postinst (Debian's way)
# shared objects: stripped of debug symbols, not executable (they are loaded, never run)
find "$VENV" -type f \( -name '*.so' -o -name '*.so.*' \) -print0 \
    | xargs -0r strip --strip-unneeded --remove-section=.comment --remove-section=.note
find "$VENV" -type f \( -name '*.so' -o -name '*.so.*' \) -exec chmod 0644 {} +
# data and test files some wheels mark executable: only the bin/ scripts are run
find "$VENV/$SITE_REL" -type f -perm /111 ! -name '*.so' ! -name '*.so.*' -exec chmod a-x {} +
# console scripts (#! line) and pyvenv.cfg name the build path: point them at the installed prefix,
# and record the rewritten scripts' and stripped objects' new hashes in their RECORD
grep -rlI -- "$VENV" "$VENV/bin" "$VENV/pyvenv.cfg" | xargs -r sed -i "s#$VENV#$PREFIX#g"
"$VENV/bin/python" packaging/fix_record.py "$VENV/$SITE_REL"
if grep -rlI -- "$BUILD" "$ROOT"; then
    echo "build-deb: the files above still name the build directory" >&2
    exit 1
fi

# 4. the rest of the layout
for unit in fluxagent.service fluxagent-metrics.service fluxagent-metrics.timer; do
    install -D -m 0644 "packaging/systemd/$unit" "$ROOT/lib/systemd/system/$unit"
done
install -D -m 0644 packaging/sysusers.d/fluxagent.conf "$ROOT/usr/lib/sysusers.d/fluxagent.conf"
install -D -m 0644 packaging/tmpfiles.d/fluxagent.conf "$ROOT/usr/lib/tmpfiles.d/fluxagent.conf"
# the example is documentation, not a conffile: upgrades never ask about a file that has no effect
install -D -m 0644 fluxagent.example.toml "$DOC/examples/fluxagent.toml"
install -D -m 0644 packaging/systemd/ip-allowlist.conf.example "$DOC/examples/ip-allowlist.conf"
install -D -m 0644 packaging/prometheus/fluxagent-alerts.yml "$DOC/examples/fluxagent-alerts.yml"
install -D -m 0644 README.md "$DOC/README.md"
for doc in docs/*.md; do install -D -m 0644 "$doc" "$DOC/$(basename "$doc")"; done
install -D -m 0644 packaging/debian/lintian-overrides "$ROOT/usr/share/lintian/overrides/fluxagent"
{
    echo "fluxagent ($DEBVERSION) $RELEASE; urgency=medium"
    echo
    echo "  * fluxagent $VERSION for Debian $DEBNUM ($RELEASE), on its python$PYV."
    echo
    echo " -- FluxBilling <support@fluxbilling.example>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$DOC/changelog.Debian.gz"
mkdir -p "$ROOT/usr/bin"
for script in $own_scripts; do   # on PATH: fluxagent, and the docker credential helper docker looks up
    ln -s "$PREFIX/bin/$script" "$ROOT/usr/bin/$script"
done

# 5. control files
mkdir -p "$ROOT/DEBIAN"
for script in preinst postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$ROOT/DEBIAN/$script"
done
# Installed-Size as dpkg-gencontrol counts it (KiB per file rounded up, 1 per directory or link):
# independent of the build machine's file system
SIZE=$(find "$ROOT" -path "$ROOT/DEBIAN" -prune -o \( -type f -printf '%s\n' \) -o \( ! -type f -printf '1024\n' \) \
    | awk '{ kib += int(($1 + 1023) / 1024) } END { print kib }')
cat > "$ROOT/DEBIAN/control" <<EOF
Package: fluxagent
Version: $DEBVERSION
Architecture: $ARCH
Maintainer: FluxBilling <support@fluxbilling.example>
Installed-Size: $SIZE
Depends: python$PYV, libc6, adduser
Recommends: libpq5
Section: admin
Priority: optional
Homepage: https://fluxbilling.example
Description: FluxBilling licensing and telemetry agent
 fluxagent is the licensing and telemetry agent of the FluxBilling Self-Hosted
 Edition. It sends only what clause 08 of the privacy policy allows (license
 validation, aggregate counts, keyed hashes of server and network identifiers,
 update credential requests), shows it beforehand (fluxagent preview) and keeps
 a hash-chained ledger of what was sent (fluxagent log --verify).
 .
 Built for Debian $DEBNUM ($RELEASE): a Python $PYV environment under
 /opt/fluxagent. PostgreSQL platforms use the system's libpq5.
EOF
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0r md5sum) \
    > "$ROOT/DEBIAN/md5sums"

# 6. reproducible archive: one mtime, normalised permissions, sorted names (dpkg-deb sorts)
find "$ROOT" -type d -exec chmod 0755 {} +
find "$ROOT" -type f -exec chmod go-w,a+r {} +
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
DEB="$OUT/fluxagent_${DEBVERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "$DEB"
