"""Bring every RECORD of a site-packages directory in line with the files as they ship.

The build rewrites console scripts (their #! line named the build directory) and strips shared
objects after pip installed them; their RECORD lines would otherwise carry the hashes of the
build-time bytes, which differ from one build directory to the next. Files the build removed
(pip, bytecode) are dropped from RECORD.

    python fix_record.py SITE_PACKAGES_DIR
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import sys
from pathlib import Path


def record_hash(data: bytes) -> str:
    """Return a file's hash as RECORD writes it (sha256, urlsafe base64 without padding)."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def fix(record: Path, site: Path) -> None:
    """Rewrite one RECORD: current hash and size of each listed file, absent files left out."""
    rows = list(csv.reader(record.read_text(encoding="utf-8").splitlines()))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        path = site / row[0]
        if path.resolve() == record.resolve():
            writer.writerow(row)
        elif not path.is_file():
            continue
        elif not row[1]:
            writer.writerow(row)
        else:
            data = path.read_bytes()
            writer.writerow([row[0], record_hash(data), str(len(data))])
    record.write_text(out.getvalue(), encoding="utf-8")


def main() -> None:
    """Fix the RECORD of every distribution in the directory given as argument."""
    site = Path(sys.argv[1])
    for record in sorted(site.glob("*.dist-info/RECORD")):
        fix(record, site)


if __name__ == "__main__":
    main()
