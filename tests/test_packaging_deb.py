"""The Debian package's generated files: DEP-5 copyright, man pages, RECORD fix-up (packaging/*.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
from importlib.metadata import distributions
from pathlib import Path
from types import ModuleType

import pytest
from packaging_util import PACKAGING, require_tool, run

SITE = Path(sysconfig.get_paths()["purelib"])


def load(name: str) -> ModuleType:
    """Import one of packaging/'s build scripts as a module."""
    spec = importlib.util.spec_from_file_location(f"packaging_{name}", PACKAGING / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


copyright_mod = load("copyright")
manpages = load("manpages")
fix_record = load("fix_record")


def test_copyright_covers_every_distribution_of_the_venv_with_its_licence_text() -> None:
    out = run(sys.executable, str(PACKAGING / "copyright.py"), str(SITE), "opt/fluxagent/site-packages")
    assert out.returncode == 0, out.stderr
    paragraphs = out.stdout.split("\n\n")
    assert paragraphs[0].startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    for dist in distributions(path=[str(SITE)]):
        name, version = dist.metadata["Name"], dist.metadata["Version"]
        info = next(str(f).split("/")[0] for f in dist.files or [] if ".dist-info/" in str(f))
        para = next((p for p in paragraphs if f"opt/fluxagent/site-packages/{info}/*" in p), None)
        assert para is not None, f"{name} {version} is not in the copyright file"
        fields = [line.split(":")[0] for line in para.splitlines() if not line.startswith(" ")]
        assert fields == ["Files", "Copyright", "License"], (name, fields)
        if name != "fluxagent":
            assert f"The licence files of {name} {version}" in para
            assert len(para.splitlines()) > 6, f"{name}: no licence text"


def test_copyright_cites_common_licences_instead_of_repeating_them() -> None:
    apache = "                                 Apache License\n                           Version 2.0, January 2004\n"
    text = apache + "terms " * 2000
    assert copyright_mod.common_license(text) == "Apache-2.0"
    assert "/usr/share/common-licenses/Apache-2.0" in copyright_mod.cite("LICENSE", text)
    mit = "MIT License\n\nCopyright (c) 2020 Someone\n\nPermission is hereby granted..."
    assert copyright_mod.cite("LICENSE", mit) == mit


def test_copyright_names_the_licence_from_expression_classifier_or_field() -> None:
    from email.message import Message

    def meta(**fields: str | list[str]) -> Message:  # what PackageMetadata reads: email headers
        m = Message()
        for k, v in fields.items():
            for item in v if isinstance(v, list) else [v]:
                m[k.replace("_", "-")] = item
        return m

    assert copyright_mod.license_name(meta(License_Expression="MIT OR Apache-2.0", License="x")) == "MIT OR Apache-2.0"
    assert copyright_mod.license_name(meta(Classifier=["License :: OSI Approved :: ISC License (ISCL)"],
                                           License="ISC License")) == "ISC"
    assert copyright_mod.license_name(meta(License="BSD-3-Clause")) == "BSD-3-Clause"
    assert copyright_mod.license_name(meta()) == ""


def test_a_distribution_without_licence_text_stops_the_build(tmp_path: Path) -> None:
    info = tmp_path / "bare-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bare\nVersion: 1.0\nLicense-Expression: MIT\n")
    (tmp_path / "bare.py").write_text("")
    (info / "RECORD").write_text("bare.py,,\nbare-1.0.dist-info/METADATA,,\nbare-1.0.dist-info/RECORD,,\n")
    out = run(sys.executable, str(PACKAGING / "copyright.py"), str(tmp_path), "opt/x")
    assert out.returncode == 1
    assert "bare 1.0: no licence file in the distribution" in out.stderr


def test_man_pages_exist_for_fluxagent_and_every_subcommand(tmp_path: Path) -> None:
    written = {p.name for p in manpages.write_all(tmp_path, "2026-01-01")}
    expected = {"fluxagent.1", "fluxagent-run.1", "fluxagent-status.1", "fluxagent-credentials.1",
                "fluxagent-credentials-docker.1", "fluxagent-credentials-git.1", "fluxagent-credentials-apt.1",
                "fluxagent-log.1", "fluxagent-init.1", "fluxagent-preview.1", "fluxagent-validate.1",
                "fluxagent-demo.1", "fluxagent-export.1", "fluxagent-import.1"}
    assert expected <= written
    top = (tmp_path / "fluxagent.1").read_text()
    assert '.TH "FLUXAGENT" "1" "2026-01-01"' in top
    assert "\\fB\\-\\-config\\fR" in top or "\\-\\-config" in top
    for sub in ("run", "status", "credentials"):
        assert f"\\fBfluxagent\\-{sub}\\fR(1)" in top, f"SEE ALSO lacks fluxagent-{sub}(1)"
    log_page = (tmp_path / "fluxagent-log.1").read_text()
    assert "\\-\\-verify" in log_page


def test_man_pages_render_without_warnings(tmp_path: Path) -> None:
    require_tool("man")
    for page in manpages.write_all(tmp_path, "2026-01-01"):
        out = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                             env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stderr == "", f"{page.name}: {out.stderr}"
        assert "NAME" in out.stdout and "SYNOPSIS" in out.stdout


def test_roff_escapes_dashes_backslashes_and_leading_dots() -> None:
    assert manpages.roff("a-b \\ c") == "a\\-b \\e c"
    assert manpages.roff(".not a request\n'nor this") == "\\&.not a request\n\\&'nor this"


def test_fix_record_rehashes_rewritten_files_and_drops_removed_ones(tmp_path: Path) -> None:
    info = tmp_path / "pkg-1.dist-info"
    info.mkdir()
    (tmp_path / "pkg.py").write_bytes(b"changed\n")
    (info / "RECORD").write_text("pkg.py,sha256=stale,3\ngone.py,sha256=x,1\npkg-1.dist-info/RECORD,,\n")
    fix_record.fix(info / "RECORD", tmp_path)
    lines = (info / "RECORD").read_text().splitlines()
    digest = fix_record.record_hash(b"changed\n")
    assert lines == [f"pkg.py,{digest},8", "pkg-1.dist-info/RECORD,,"]


@pytest.mark.parametrize("script", ["build-deb.sh", "smoke-deb.sh", "upgrade-deb.sh", "lock.sh",
                                    "check-python-dist.sh"])
def test_packaging_scripts_parse(script: str) -> None:
    out = run("bash", "-n", str(PACKAGING / script))
    assert out.returncode == 0, out.stderr


def _name(requirement: str) -> str:
    """Return the normalised distribution name of a requirement ("psycopg[binary]>=3" → "psycopg")."""
    import re

    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    import tomllib

    project = tomllib.loads((PACKAGING.parent / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    wanted |= {_name(r) for extra in ("postgres", "mysql") for r in project["optional-dependencies"][extra]}
    lock = (PACKAGING / "requirements.lock").read_text()
    pinned = {_name(line.split("==")[0]) for line in lock.splitlines() if "==" in line and not line.startswith(" ")}
    assert wanted <= pinned, f"run packaging/lock.sh: {sorted(wanted - pinned)} not in requirements.lock"
    blocks: list[list[str]] = []
    for line in lock.splitlines():
        if "==" in line and not line.startswith(" "):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    assert blocks and all(any("--hash=sha256:" in line for line in b) for b in blocks)
    assert "psycopg-binary" not in pinned  # Debian's libpq5, not a bundled copy
    assert not {"rich", "pygments", "markdown-it-py", "mdurl"} & pinned


def test_the_build_backend_is_locked_with_hashes_too() -> None:
    import tomllib

    requires = tomllib.loads((PACKAGING.parent / "pyproject.toml").read_text())["build-system"]["requires"]
    lock = (PACKAGING / "build-requirements.lock").read_text()
    pinned = {_name(line.split("==")[0]) for line in lock.splitlines() if "==" in line and not line.startswith(" ")}
    assert {_name(r) for r in requires} <= pinned
    assert lock.count("--hash=sha256:") >= len(pinned)


def test_a_missing_libpq_names_the_system_package_not_the_python_extra() -> None:
    from fluxagent.sources.platform import driver_missing

    # psycopg's own words when its pure-Python implementation finds no libpq (PSYCOPG_IMPL=python, libpq5 absent)
    why = "couldn't import requested psycopg 'python' implementation: libpq library not found"
    err = driver_missing("postgresql://db.example/fb", "psycopg", "postgres", why)
    assert "needs libpq" in err.message and err.hint == "install it: apt install libpq5 (Debian and Ubuntu)"
    other = driver_missing("mysql://db.example/fb", "pymysql", "mysql", "No module named 'pymysql'")
    assert "needs the pymysql driver" in other.message and "fluxagent[mysql]" in (other.hint or "")


def test_maintainer_scripts_pass_lintians_script_checks(tmp_path: Path) -> None:
    """The maintainer scripts alone, in a throw-away package with the real Depends and overrides: the
    lintian checks of scripts (seconds, where the full package check in CI takes a build)."""
    import re
    import shutil

    lintian = require_tool("lintian")
    require_tool("dpkg-deb")
    root = tmp_path / "root"
    (root / "DEBIAN").mkdir(parents=True)
    for script in ("preinst", "postinst", "prerm", "postrm"):
        shutil.copy(PACKAGING / "debian" / script, root / "DEBIAN" / script)
        (root / "DEBIAN" / script).chmod(0o755)
    overrides = root / "usr/share/lintian/overrides/fluxagent"
    overrides.parent.mkdir(parents=True)
    shutil.copy(PACKAGING / "debian" / "lintian-overrides", overrides)
    depends = re.search(r"^Depends: (.*)$", (PACKAGING / "build-deb.sh").read_text(), re.M)
    assert depends is not None
    (root / "DEBIAN" / "control").write_text(
        "Package: fluxagent\nVersion: 0.2.0-1~deb12u1\nArchitecture: all\n"
        "Maintainer: FluxBilling <support@fluxbilling.example>\n"
        f"Depends: {depends[1].replace('$PYV', '3.11')}\nDescription: maintainer scripts only\n test package\n")
    deb = tmp_path / "fluxagent.deb"
    built = run("dpkg-deb", "--root-owner-group", "--build", str(root), str(deb))
    assert built.returncode == 0, built.stderr
    out = run(lintian, "--no-cfg", "-C", "scripts,maintainer-scripts/adduser,maintainer-scripts/systemctl", str(deb))
    tags = [line for line in out.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert tags == [], "\n".join(tags)
