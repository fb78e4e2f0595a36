"""Write debian/copyright (DEP-5) for the venv the package ships: fluxagent and every bundled distribution.

Generated at build time from the installed distributions' own metadata, so the file covers exactly
what ships: for each distribution its files (from RECORD), its licence (License-Expression, else the
trove classifiers, else the License field) and the full text of every licence file it carries
(dist-info/licenses/, legacy LICENSE/COPYING files, and vendored licence files such as typer's copy
of click's). Run with the package's interpreter:

    python copyright.py SITE_PACKAGES_DIR INSTALL_PREFIX > copyright

A distribution without any licence text is an error: the build stops instead of shipping an
incomplete copyright file.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib.metadata import Distribution, PackageMetadata, distributions
from pathlib import Path, PurePosixPath

FORMAT = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
OWN = "fluxagent"
OWN_LICENSE = "LicenseRef-FluxBilling-Proprietary"
OWN_TEXT = (
    "fluxagent is proprietary software of FluxBilling. It is licensed to you as part of the\n"
    "FluxBilling Self-Hosted Edition under the license agreement that came with your license\n"
    "file; it may be used only together with a FluxBilling Self-Hosted installation covered by\n"
    "that agreement. Clause 08 of the privacy policy states what it may send.\n\n"
    "The third-party distributions bundled under /opt/fluxagent keep their own licences, each\n"
    "given in full below."
)
# trove classifier → SPDX identifier, for distributions that declare no License-Expression
CLASSIFIERS = {
    "MIT License": "MIT",
    "ISC License (ISCL)": "ISC",
    "Apache Software License": "Apache-2.0",
    "BSD License": "BSD-3-Clause",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "Python Software Foundation License": "PSF-2.0",
}
# Licences Debian keeps in /usr/share/common-licenses: cited there, not repeated (Debian policy 12.5),
# recognised by their title lines.
COMMON = (
    ("Apache-2.0", ("Apache License", "Version 2.0, January 2004")),
    ("LGPL-3", ("GNU LESSER GENERAL PUBLIC LICENSE", "Version 3, 29 June 2007")),
    ("GPL-3", ("GNU GENERAL PUBLIC LICENSE", "Version 3, 29 June 2007")),
    ("MPL-2.0", ("Mozilla Public License Version 2.0",)),
)
LICENSE_NAME = re.compile(r"^(licen[cs]e|copying|notice|authors)", re.IGNORECASE)
COPYRIGHT_LINE = re.compile(r"^\W*(copyright\b.*\d{4}.*)$", re.IGNORECASE)


class CopyrightError(Exception):
    """A bundled distribution carries no licence text, or its licence cannot be named."""


@dataclass(frozen=True)
class Entry:
    """One distribution as the copyright file lists it."""

    name: str
    version: str
    files: tuple[str, ...]  # DEP-5 patterns relative to /
    license: str
    copyright: tuple[str, ...]
    texts: tuple[tuple[str, str], ...]  # (licence file path in the dist, its text)


def field(meta: PackageMetadata, key: str) -> str:
    """Return the first value of a metadata field ("" if absent)."""
    return str((meta.get_all(key) or [""])[0])


def license_name(meta: PackageMetadata) -> str:
    """Return the SPDX-style licence of a distribution's metadata ("" if it names none)."""
    expr = field(meta, "License-Expression").strip()
    if expr:
        return expr
    found = [CLASSIFIERS.get(c.split(" :: ")[-1], "") for c in meta.get_all("Classifier") or []
             if c.startswith("License ::")]
    found = [f for f in found if f]
    if found:
        return " or ".join(dict.fromkeys(found))
    text = field(meta, "License").strip()
    if text and "\n" not in text and len(text) < 60:
        return text.replace(" ", "-")
    return ""


def common_license(text: str) -> str | None:
    """Return the /usr/share/common-licenses name of a full standard licence text, else None."""
    head = text[:600]
    for name, titles in COMMON:
        if all(t in head for t in titles) and len(text) > 5000:
            return name
    return None


def cite(path: str, text: str) -> str:
    """Return a licence file's text, or for a standard licence Debian ships, where to read it."""
    common = common_license(text)
    if common is None:
        return text
    return f"The text of {common}: on Debian systems, see /usr/share/common-licenses/{common}."


def license_files(dist: Distribution) -> list[PurePosixPath]:
    """Return the licence files a distribution installed: dist-info ones and vendored ones, sorted."""
    out = []
    for f in dist.files or []:
        parts = PurePosixPath(str(f)).parts
        in_licenses_dir = len(parts) > 2 and parts[0].endswith(".dist-info") and parts[1] == "licenses"
        if in_licenses_dir or (LICENSE_NAME.match(parts[-1]) and not parts[-1].endswith((".py", ".pyc"))):
            out.append(PurePosixPath(str(f)))
    return sorted(set(out))


def entry(dist: Distribution, site: Path, prefix: str) -> Entry:
    """Return the copyright entry of one installed distribution; raises CopyrightError."""
    meta = dist.metadata
    name, version = meta["Name"], meta["Version"]
    # console scripts (../../../bin) are fluxagent's own; bytecode goes with its source
    tops = sorted({PurePosixPath(str(f)).parts[0] for f in dist.files or []
                   if not str(f).startswith("..") and PurePosixPath(str(f)).parts[0] != "__pycache__"})
    files = tuple(f"{prefix}/{t}/*" if (site / t).is_dir() else f"{prefix}/{t}" for t in tops)
    if name == OWN:
        return Entry(name, version, files, OWN_LICENSE, ("FluxBilling",), ())
    lic = license_name(meta)
    if not lic:
        raise CopyrightError(f"{name} {version}: its metadata names no licence")
    texts = []
    for rel in license_files(dist):
        text = (site / rel).read_text(encoding="utf-8", errors="replace").strip()
        if text:
            texts.append((str(rel), text))
    if not texts:
        raise CopyrightError(f"{name} {version}: no licence file in the distribution")
    holders = [m.group(1).strip() for _, t in texts for line in t.splitlines()
               if (m := COPYRIGHT_LINE.match(line.strip()))]
    if not holders:
        who = field(meta, "Author") or field(meta, "Author-email") or field(meta, "Maintainer-email") or name
        holders = [f"{who} (the {name} authors)"]
    return Entry(name, version, files, lic, tuple(dict.fromkeys(holders)), tuple(texts))


def collect(site: Path, prefix: str) -> list[Entry]:
    """Return one entry per distribution installed in site, fluxagent first; raises CopyrightError."""
    dists = sorted(distributions(path=[str(site)]), key=lambda d: d.metadata["Name"].lower())
    entries = [entry(d, site, prefix) for d in dists]
    return sorted(entries, key=lambda e: (e.name != OWN, e.name.lower()))


def _body(text: str) -> list[str]:
    """Return text as DEP-5 continuation lines (blank lines become " .")."""
    return [f" {line.rstrip()}" if line.strip() else " ." for line in text.splitlines()]


def render(entries: list[Entry]) -> str:
    """Return the DEP-5 copyright file for the entries (pure)."""
    out = [f"Format: {FORMAT}", f"Upstream-Name: {OWN}", "Source: https://fluxbilling.example",
           "Comment: Generated at build time from the metadata of every distribution installed under",
           " /opt/fluxagent (packaging/copyright.py).", ""]
    for e in entries:
        out.append("Files: " + "\n ".join(e.files))
        out.append("Copyright: " + "\n ".join(e.copyright))
        if e.name == OWN:
            out += [f"License: {e.license}", *_body(OWN_TEXT)]
        else:
            out.append(f"License: {e.license}")
            parts = [f"The licence files of {e.name} {e.version}, as it ships them:"]
            parts += [f"--- {path} ---\n\n{cite(path, text)}" for path, text in e.texts]
            out += _body("\n\n".join(parts))
        out.append("")
    return "\n".join(out)


def main() -> None:
    """Print the copyright file for the site-packages directory and install prefix given as arguments."""
    site, prefix = Path(sys.argv[1]), sys.argv[2].strip("/")
    try:
        sys.stdout.write(render(collect(site, prefix)))
    except CopyrightError as exc:
        print(f"copyright.py: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
