"""The registry versions shipped with the package (`v<N>.json` beside this module), read once.

`python -m fluxagent.schema.shipped` writes the running registry as the next version file when it
differs from the newest one (or refreshes the newest file's wording when only meanings changed).
"""

from __future__ import annotations

import functools
import re
import sys
from importlib import resources
from pathlib import Path

from fluxagent.schema.versions import Catalog, Version, version_from_json
from fluxagent.wire.messages import REGISTRY

_NAME = re.compile(r"^v([0-9]{1,4})\.json$")


@functools.cache
def shipped() -> Catalog:
    """Return the catalog of the shipped version files; raises ValueError if one is damaged."""
    root = resources.files("fluxagent.schema")
    found = []
    for entry in root.iterdir():
        m = _NAME.match(entry.name)
        if m:
            v = version_from_json(entry.read_bytes(), f"fluxagent/schema/{entry.name}")
            if v.number != int(m.group(1)):
                raise ValueError(f"fluxagent/schema/{entry.name}: holds version {v.number}")
            found.append(v)
    return Catalog(tuple(sorted(found, key=lambda v: v.number)))


def running() -> Version:
    """Return the running registry as a version value (numbered as the newest shipped file it matches)."""
    newest = shipped().newest
    return Version(newest.number, REGISTRY)


def generate(directory: Path) -> Path | None:
    """Write the running REGISTRY as a version file in directory if it changed; return the file written."""
    files = sorted(directory.glob("v*.json"), key=lambda p: int(p.stem[1:]))
    newest = version_from_json(files[-1].read_bytes(), str(files[-1])) if files else None
    if newest is not None and newest.fingerprint == Version(newest.number, REGISTRY).fingerprint:
        current = Version(newest.number, REGISTRY)
        if current.to_json() == files[-1].read_bytes():
            return None
        path = files[-1]  # same fingerprint: only the wording changed, no new approval needed
    else:
        current = Version(newest.number + 1 if newest else 1, REGISTRY)
        path = directory / f"v{current.number}.json"
    path.write_bytes(current.to_json())
    return path


if __name__ == "__main__":
    written = generate(Path(__file__).resolve().parent)
    sys.stdout.write(f"wrote {written}\n" if written else "the newest version file matches the registry\n")
