"""Each config key is described once (fluxagent/config.py); the example file, docs/CONFIG.md and the
config `init` writes are rendered from that description and agree with what the loader accepts."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from conftest import run_cli
from hypothesis import given
from hypothesis import strategies as st

from fluxagent import config, configdoc
from fluxagent.config import Config

ROOT = Path(__file__).resolve().parent.parent


def _section_classes() -> dict[str, type[Any]]:
    return {name: cls for name, _, cls in config.sections()}


def _table(doc: dict[str, Any], dotted: str) -> dict[str, Any]:
    for part in dotted.split("."):
        doc = doc[part]
    return doc


def test_the_example_file_is_what_the_description_generates() -> None:
    assert (ROOT / configdoc.EXAMPLE_PATH).read_text(encoding="utf-8") == configdoc.example_toml(), (
        "fluxagent.example.toml is stale: run `python -m fluxagent.configdoc --write`")


def test_the_configuration_reference_is_what_the_description_generates() -> None:
    assert (ROOT / configdoc.REFERENCE_PATH).read_text(encoding="utf-8") == configdoc.reference_markdown(), (
        "docs/CONFIG.md is stale: run `python -m fluxagent.configdoc --write`")


def test_every_dataclass_field_is_a_described_key_or_section() -> None:
    reachable = {Config, *_section_classes().values()}
    undescribed = [f"{cls.__name__}.{f.name}" for cls in reachable for f in dataclasses.fields(cls)
                   if "key" not in f.metadata and "section" not in f.metadata]
    assert undescribed == ["Config.source"]  # where the config was read from: not a key of the file
    for f, k in (pair for cls in reachable for pair in config.keys(cls)):
        assert k.doc.strip() and k.doc.rstrip().endswith((".", ")")), f.name
        assert k.type.name, f.name


def test_every_described_key_is_in_the_reference_tables_and_the_example_and_nothing_else() -> None:
    described = {(name, f.name) for name, cls in _section_classes().items() for f, _ in config.keys(cls)}
    reference = configdoc.reference_markdown()
    tabled, current = set(), ""
    for line in reference.splitlines():
        if m := re.match(r"## \[(.+)\]$", line):
            current = m.group(1)
        elif m := re.match(r"\| `(\w+)` \|", line):
            tabled.add((current, m.group(1)))
    assert tabled == described
    example, current = set(), ""
    for line in configdoc.example_toml().splitlines():
        if m := re.match(r"\[(.+)\]$", line):
            current = m.group(1)
        elif m := re.match(r"(?:# )?(\w+) = ", line):
            example.add((current, m.group(1)))
    assert example == described
    assert set(config.SCHEMA) == set(_section_classes())
    assert {(s, k) for s, keys in config.SCHEMA.items() for k in keys} == described


def test_every_default_or_example_written_out_parses_back_to_itself() -> None:
    for name, cls in _section_classes().items():
        default = cls()
        for f, k in config.keys(cls):
            if k.example is not None:  # a key whose default is no use as it is (required, or empty placeholder)
                assert k.type.render(k.type.parse(k.example)) == k.example, (name, f.name)
            else:
                assert k.type.parse(k.type.render(getattr(default, f.name))) == getattr(default, f.name), (name, f.name)


def test_the_generated_example_loads_to_the_defaults_and_the_example_values(tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(configdoc.example_toml(), encoding="utf-8")
    loaded = config.load(path)
    for name, cls in _section_classes().items():
        section = loaded
        for part in name.split("."):
            section = getattr(section, part)
        for f, k in config.keys(cls):
            want = k.type.parse(k.example) if k.example is not None else getattr(cls(), f.name)
            assert getattr(section, f.name) == want, (name, f.name)
    assert loaded.instance.bound_domain == "billing.example.com" and len(loaded.server.vendor_keys) == 2


def test_every_written_value_round_trips_including_overridden_queries() -> None:
    cfg = Config(
        instance=config.InstanceConfig(bound_domain="bílling.example.com", state_dir=Path("/srv/fa state"),
                                       license_file=Path("/etc/fa/lic \"q\".json")),
        server=config.ServerConfig(url="https://lic.example.net:8443", vendor_keys=(b"\x01" * 32, b"\x02" * 32),
                                   ca_bundle=Path("/etc/fa/ca.pem"), proxy="http://u:p@proxy.example:3128",
                                   connect_timeout=0.25, read_timeout=90.0, max_response_bytes=123_457),
        schedule=config.ScheduleConfig(heartbeat=5400.0, license_check=61.0, digest=86400.0 * 3, jitter=0.0,
                                       offline_grace=3600.0),
        platform=config.PlatformConfig(database="postgresql://fa@db.example/fb", version="7.1.2",
                                       hostname="bill.example.org", password_file=Path("/etc/fa/pw"),
                                       connect_timeout=3.0, statement_timeout=120.0,
                                       queries=config.Queries(active_clients="SELECT 42", networks="SELECT '\\n'")),
        host=config.HostConfig(include_interfaces=False, exclude_interfaces=("eth9", "wg*")),
        spool=config.SpoolConfig(max_messages=10, max_bytes=65536),
        log=config.LogConfig(format="json", level="debug"),
        updates=config.UpdatesConfig(apt_auth_file=Path("/etc/apt/auth.conf.d/x.conf"), min_remaining=0.0),
    )
    text = configdoc.init_toml(cfg)
    assert config.from_mapping(tomllib.loads(text)) == cfg
    assert 'active_clients = "SELECT 42"' in text  # an override is written, not commented out
    assert '# total_users = "SELECT COUNT(*) FROM users"' in text  # a default query stays a comment


@given(st.text())
def test_any_string_value_is_written_as_toml_that_reads_back_the_same(value: str) -> None:
    assert tomllib.loads(f"v = {configdoc.toml_value(value)}")["v"] == value
    assert tomllib.loads(f"v = {configdoc.toml_value([value] * 5)}")["v"] == [value] * 5


def test_init_writes_the_commented_config_that_loads_with_the_options_given(tmp_path: Path) -> None:
    cfg_path = tmp_path / "etc" / "fluxagent.toml"
    key_a, key_b = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI="
    proc = run_cli("--config", str(cfg_path), "init", "--bound-domain", "billing.example.org",
                   "--server-url", "https://licensing.example.net/", "--vendor-key", key_a, "--vendor-key", key_b,
                   "--state-dir", str(tmp_path / "state"), "--database", f"sqlite:///{tmp_path / 'p.db'}",
                   "--license-file", str(tmp_path / "license.json"))
    assert proc.returncode == 0, proc.stderr
    text = cfg_path.read_text(encoding="utf-8")
    cfg = config.load(cfg_path)
    assert cfg.instance.bound_domain == "billing.example.org"
    assert cfg.server.url == "https://licensing.example.net"
    assert cfg.server.vendor_keys == (b"\x01" * 32, b"\x02" * 32)
    assert cfg.instance.state_dir == tmp_path / "state"
    assert cfg.instance.license_file == tmp_path / "license.json"
    assert cfg.platform.database == f"sqlite:///{tmp_path / 'p.db'}"
    assert dataclasses.replace(cfg, instance=Config().instance, server=Config().server, platform=Config().platform,
                               source=None) == Config()  # every key not given keeps its default
    assert config.from_mapping(tomllib.loads(text)) == dataclasses.replace(cfg, source=None)
    assert _body_comments(text) == _body_comments(configdoc.example_toml())  # the example's comments, all of them


def _body_comments(text: str) -> list[str]:
    """Return the comment lines after the file's header (which ends at the first blank line)."""
    return [line for line in text.split("\n\n", 1)[1].splitlines() if line.startswith("#")]


def test_configdoc_check_fails_on_a_stale_file_and_write_brings_it_back(tmp_path: Path, capsys: Any) -> None:
    for rel, text in configdoc.generated_files().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    assert configdoc.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / configdoc.EXAMPLE_PATH).write_text("# edited by hand\n", encoding="utf-8")
    assert configdoc.main(["--check", "--root", str(tmp_path)]) == 1
    assert "fluxagent.example.toml" in capsys.readouterr().err
    assert configdoc.main(["--write", "--root", str(tmp_path)]) == 0
    assert (tmp_path / configdoc.EXAMPLE_PATH).read_text(encoding="utf-8") == configdoc.example_toml()
