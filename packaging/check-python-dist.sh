#!/usr/bin/env bash
# The Python distributions: `python -m build` makes an sdist and a wheel (the wheel built from the
# sdist, so the sdist is complete), `twine check --strict` accepts both, and the wheel installs in a
# fresh venv where `fluxagent demo` runs end to end.
#
#   packaging/check-python-dist.sh [OUTDIR]     → OUTDIR/fluxagent-<version>.tar.gz and .whl (default: a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=${1:-$tmp/dist}
mkdir -p "$out"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m venv "$tmp/tools"
"$tmp/tools/bin/pip" install -q "build>=1.2" "twine>=6.1"
"$tmp/tools/bin/python" -m build -q --outdir "$out" . >/dev/null
ls "$out"
"$tmp/tools/bin/twine" check --strict "$out"/fluxagent-*.tar.gz "$out"/fluxagent-*.whl
python3 -m venv "$tmp/fresh"
"$tmp/fresh/bin/pip" install -q "$out"/fluxagent-*.whl
(cd "$tmp" && "$tmp/fresh/bin/fluxagent" --version && "$tmp/fresh/bin/fluxagent" demo > "$tmp/demo.out") \
    || { cat "$tmp/demo.out" >&2; echo "check-python-dist: fluxagent demo failed in a fresh venv" >&2; exit 1; }
tail -n 3 "$tmp/demo.out"
echo "check-python-dist: OK"
