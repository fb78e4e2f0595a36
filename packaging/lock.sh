#!/usr/bin/env bash
# Regenerate packaging/requirements.lock: every distribution the Debian package bundles, pinned to
# one version with the sha256 of each of its files on PyPI, and packaging/build-requirements.lock:
# the build backend that makes fluxagent's wheel. build-deb.sh installs exactly these (pip
# --require-hashes --no-deps), so two builds bundle the same bytes whatever PyPI serves later.
#
#   packaging/lock.sh            → rewrites both lock files; review and commit the diff
#
# One lock serves every Debian release we build for (--universal: environment markers instead of
# per-interpreter files). Dependencies that nothing imports at run time are left out on purpose:
# typer's rich (and rich's pygments, markdown-it-py, mdurl: typer uses rich only when it is
# installed, and fluxagent turns its markup off), httpx's anyio (httpcore needs it only for async),
# and cffi's pycparser (needed only to compile cffi modules, not to load PyNaCl's).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check "uv>=0.9,<1"
unused=(rich pygments markdown-it-py mdurl anyio sniffio pycparser)
"$tmp/venv/bin/uv" pip compile pyproject.toml --extra postgres --extra mysql \
    --universal --python-version 3.11 --generate-hashes --no-header --quiet \
    "${unused[@]/#/--no-emit-package=}" -o "$tmp/requirements.lock"
{
    echo "# The distributions the Debian package bundles, with hashes: regenerate with packaging/lock.sh."
    echo "# Left out on purpose (not imported at run time): ${unused[*]}"
    cat "$tmp/requirements.lock"
} > packaging/requirements.lock
echo "packaging/requirements.lock: $(grep -c '^[a-z]' packaging/requirements.lock) distributions"

# The build backend that makes fluxagent's own wheel (pyproject's [build-system] requires), pinned
# the same way: build-deb.sh builds without isolation from exactly these.
"$tmp/venv/bin/python" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
    > "$tmp/build.in"
"$tmp/venv/bin/uv" pip compile "$tmp/build.in" --universal --python-version 3.11 --generate-hashes --no-header \
    --quiet -o "$tmp/build-requirements.lock"
{
    echo "# The build backend of fluxagent's own wheel, with hashes: regenerate with packaging/lock.sh."
    cat "$tmp/build-requirements.lock"
} > packaging/build-requirements.lock
echo "packaging/build-requirements.lock: $(grep -c '^[a-z]' packaging/build-requirements.lock) distributions"
