"""Configuration: TOML → frozen dataclasses, every problem reported at once with file and dotted path."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import tomllib
from pathlib import Path

import pytest
import tomli_w
from conftest import base_config, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxagent import config
from fluxagent.errors import EXIT_CONFIG, ConfigError

VENDOR_KEY = base64.b64encode(b"\x07" * 32).decode()

MANY_MISTAKES = f"""
[instance]
bound_domain = "billing.example.com"
state_dir = "/var/lib/fluxagent"

[server]
url = "http://licensing.example.net"
vendor_keys = ["{VENDOR_KEY}", "bm90LWEta2V5"]
proxy = "proxy.example:3128"
read_timeout = "twenty seconds"

[schedule]
hearbeat = "1h"
digest = 86400

[spool]
max_messages = "lots"
"""


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return info.value.problems


def test_minimal_config_gets_documented_defaults(write_config):
    path = write_config('[instance]\nbound_domain = "billing.example.com"\n')
    cfg = config.load(path)
    assert cfg.instance.bound_domain == "billing.example.com"
    assert cfg.instance.state_dir == Path("/var/lib/fluxagent")
    assert cfg.schedule.heartbeat == 3600
    assert cfg.schedule.license_check == 6 * 3600
    assert cfg.schedule.digest == 86400
    assert cfg.schedule.offline_grace == 14 * 86400
    assert cfg.server.url.startswith("https://")
    assert cfg.spool.max_bytes == 64_000_000
    assert cfg.host.exclude_interfaces == ("lo", "docker*", "veth*", "br-*")
    assert cfg.source == path


def test_config_is_frozen(write_config):
    cfg = config.load(write_config('[instance]\nbound_domain = "billing.example.com"\n'))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.instance.bound_domain = "other.example"  # type: ignore[misc]


def test_every_mistake_is_reported_at_once_with_file_and_dotted_path(write_config):
    path = write_config(MANY_MISTAKES)
    problems = _problems(path)
    expected = {
        "server.url": "http://",
        "server.vendor_keys": "[1]",
        "server.proxy": "proxy URL",
        "server.read_timeout": "not a duration",
        "schedule.hearbeat": "did you mean 'heartbeat'",
        "spool.max_messages": "expected an integer",
    }
    assert len(problems) == len(expected), problems
    for dotted, detail in expected.items():
        matching = [p for p in problems if p.startswith(f"{path}: {dotted}: ")]
        assert len(matching) == 1, (dotted, problems)
        assert detail in matching[0]


def test_a_bare_integer_duration_counts_as_seconds(write_config):
    text = '[instance]\nbound_domain = "billing.example.com"\n[schedule]\ndigest = 86400\n'
    assert config.load(write_config(text)).schedule.digest == 86400


def test_missing_required_bound_domain_is_reported(write_config):
    path = write_config("[schedule]\nheartbeat = \"2h\"\n")
    assert _problems(path) == [f"{path}: instance.bound_domain: is required"]


def test_unknown_section_and_unknown_query_name_are_errors(write_config):
    path = write_config(
        '[instance]\nbound_domain = "billing.example.com"\n'
        '[platfrom]\ndatabase = "sqlite:///x.db"\n'
        '[platform.queries]\nactive_client = "SELECT 1"\n'
    )
    problems = _problems(path)
    assert any(p.startswith(f"{path}: platfrom: unknown section") for p in problems)
    assert any(p.startswith(f"{path}: platform.queries.active_client: unknown key") for p in problems)


@pytest.mark.parametrize(
    "url",
    [
        "http://licensing.example.net",
        "http://10.0.0.5:8080",
        "ftp://licensing.example.net",
        "licensing.example.net",
        "https://",
        "https://user:pw@licensing.example.net",
        "https://licensing.example.net/?q=1",
        "https://licensing.example.net:notaport",
        "https://licensing.example.net:99999",
        "https://[::1",
    ],
)
def test_bad_server_urls_are_refused(write_config, url):
    path = write_config(tomli_w.dumps({"instance": {"bound_domain": "billing.example.com"},
                                       "server": {"url": url}}))
    problems = _problems(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: server.url: "), problems


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://[::1]:9", "http://localhost:9",
                                 "https://licensing.example.net/", "https://licensing.example.net:8443"])
def test_loopback_http_and_any_https_url_are_accepted(write_config, url):
    doc = {"instance": {"bound_domain": "billing.example.com"}, "server": {"url": url}}
    cfg = config.load(write_config(tomli_w.dumps(doc)))
    assert cfg.server.url == url.rstrip("/")


def test_server_audience_is_the_lowercase_host_without_port(write_config):
    doc = {"instance": {"bound_domain": "billing.example.com"},
           "server": {"url": "https://Licensing.Example.NET:8443"}}
    assert config.load(write_config(tomli_w.dumps(doc))).server.audience == "licensing.example.net"


@pytest.mark.parametrize(
    "keys, detail",
    [
        (["bm90LWEta2V5"], "[0] decodes to 9 bytes"),
        (["***"], "[0] is not valid base64"),
        ([VENDOR_KEY, VENDOR_KEY], "same key twice"),
        ("just-one-string", "expected a list"),
        ([7], "[0] expected a string"),
    ],
)
def test_bad_vendor_keys_are_refused_with_the_reason(write_config, keys, detail):
    doc = {"instance": {"bound_domain": "billing.example.com"}, "server": {"vendor_keys": keys}}
    path = write_config(tomli_w.dumps(doc))
    [problem] = _problems(path)
    assert problem.startswith(f"{path}: server.vendor_keys: ")
    assert detail in problem


def test_vendor_keys_decode_to_raw_public_keys(write_config):
    other = base64.b64encode(b"\x08" * 32).decode()
    doc = {"instance": {"bound_domain": "billing.example.com"}, "server": {"vendor_keys": [VENDOR_KEY, other]}}
    assert config.load(write_config(tomli_w.dumps(doc))).server.vendor_keys == (b"\x07" * 32, b"\x08" * 32)


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("1h30m", 5400), ("14d", 14 * 86400), ("250ms", 0.25), ("2w", 14 * 86400),
     ("1h 30m", 5400), ("1.5h", 5400), ("0s", 0), (45, 45), (2.5, 2.5)],
)
def test_durations_parse(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1x", "h", "-5s", "1h-30m", "s1", "1hh", "5 minutes",
                                  "11000d", True, None, [1]])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        config.parse_duration(text)


@pytest.mark.parametrize(
    "text, size",
    [("20MB", 20_000_000), ("512KiB", 512 * 1024), ("1GB", 10**9), ("2MiB", 2 * 2**20),
     ("100B", 100), ("64kib", 65536), (4096, 4096), ("1.5MB", 1_500_000)],
)
def test_sizes_parse(text, size):
    assert config.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "20 TB", "-1MB", "1e3MB", True, 2.5, "9" * 400 + "MB"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError):
        config.parse_size(text)


@pytest.mark.parametrize("seconds", [0.25, 1, 59, 60, 90, 3600, 5400, 86400, 14 * 86400, 604800])
def test_format_duration_round_trips(seconds):
    assert config.parse_duration(config.format_duration(seconds)) == seconds


def test_to_mapping_round_trips_through_toml(tmp_path, write_config):
    doc = base_config(tmp_path / "state", tmp_path / "platform.db",
                      schedule={"heartbeat": "90m", "jitter": "0s"}, spool={"max_bytes": "512KiB"},
                      host={"include_interfaces": False, "exclude_interfaces": ["lo"]})
    cfg = config.load(write_config(doc))
    again = config.load(write_config(config.to_mapping(cfg), name="again.toml"))
    assert dataclasses.replace(again, source=None) == dataclasses.replace(cfg, source=None)


def test_syntax_error_names_the_file(write_config):
    path = write_config("[instance\nbound_domain = ")
    [problem] = _problems(path)
    assert problem.startswith(f"{path}: TOML syntax")


def test_missing_file_says_to_run_init(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "absent.toml")
    assert info.value.exit_code == EXIT_CONFIG
    assert "fluxagent init" in str(info.value)


def test_non_utf8_file_is_refused_not_crashing(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[instance]\nbound_domain = "b\xfccher.example"\n'.encode("latin-1"))
    [problem] = _problems(path)
    assert "UTF-8" in problem


def test_cli_reports_all_config_problems_on_stderr_with_exit_78(write_config):
    path = write_config(MANY_MISTAKES)
    proc = run_cli("--config", str(path), "preview")
    assert proc.returncode == 78, proc.stderr
    assert proc.stdout == ""
    for dotted in ("server.url", "server.vendor_keys", "server.proxy", "server.read_timeout", "schedule.hearbeat",
                   "spool.max_messages"):
        assert f"{path}: {dotted}: " in proc.stderr


def test_fluxagent_config_environment_variable_selects_the_file(write_config):
    path = write_config("[instance]\nbound_domain = 5\n", name="from-env.toml")
    proc = run_cli("preview", env={"FLUXAGENT_CONFIG": str(path)})
    assert proc.returncode == 78
    assert f"{path}: instance.bound_domain: expected a string" in proc.stderr


def test_config_option_wins_over_the_environment_variable(write_config):
    env_path = write_config("[instance]\nbound_domain = 5\n", name="env.toml")
    opt_path = write_config("[instance]\nbound_domain = 6\n", name="opt.toml")
    proc = run_cli("--config", str(opt_path), "preview", env={"FLUXAGENT_CONFIG": str(env_path)})
    assert proc.returncode == 78
    assert str(opt_path) in proc.stderr and str(env_path) not in proc.stderr


# ---- property: whatever a TOML file holds, loading raises ConfigError or returns a Config ----

_toml_scalars = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["90s", "1h30m", "20MB", "512KiB", "https://x.example", "http://127.0.0.1:1",
                     "sqlite:///x.db", "postgresql://db", "json", "info", "billing.example.com",
                     "9" * 400 + "MB", "9" * 400 + "s", "1e999", "nan", "xn--", "xn--zz.example",
                     "\x00", VENDOR_KEY, "http://[::1", "https://h:99999"]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers().map(lambda n: n * 10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
)
_toml_values = st.recursive(
    _toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_known_keys = [(section, key) for section, keys in config.SCHEMA.items() for key in keys]


@st.composite
def _documents(draw: st.DrawFn) -> dict[str, object]:
    doc: dict[str, dict[str, object]] = {"instance": {"bound_domain": "billing.example.com"}}
    for section, key in draw(st.lists(st.sampled_from(_known_keys), max_size=6)):
        top, _, sub = section.partition(".")
        table = doc.setdefault(top, {})
        if sub:
            table = table.setdefault(sub, {})  # type: ignore[assignment]
        table[key] = draw(_toml_values)
    if draw(st.booleans()):
        doc[draw(st.sampled_from([*list(doc), "extra"]))] = draw(_toml_values)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_documents())
def test_any_values_for_any_key_raise_only_config_error(doc):
    try:
        cfg = config.from_mapping(doc, Path("fuzz.toml"))
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.toml: ") for p in exc.problems)
        return
    assert isinstance(cfg, config.Config)


@settings(max_examples=150, deadline=None)
@given(value=_toml_values)
def test_any_value_written_to_a_real_toml_file_loads_or_raises_config_error(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("fuzz") / "fluxagent.toml"
    key = ("server", "read_timeout") if isinstance(value, int | float | str) else ("spool", "max_bytes")
    try:
        text = tomli_w.dumps({"instance": {"bound_domain": "a.example"}, key[0]: {key[1]: value}})
    except (TypeError, ValueError):
        return  # not representable in TOML
    path.write_text(text, encoding="utf-8")
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    try:
        config.load(path)
    except ConfigError as exc:
        assert all(p.startswith(f"{path}: ") for p in exc.problems)


def test_platform_password_file_and_timeouts_are_read(write_config):
    path = write_config('[instance]\nbound_domain = "billing.example.com"\n[platform]\n'
                        'database = "postgresql://fluxagent@db.example.net/fluxbilling"\n'
                        'password_file = "/etc/fluxagent/db.password"\nconnect_timeout = "5s"\n'
                        'statement_timeout = "2m"\n')
    p = config.load(path).platform
    assert p.password_file == Path("/etc/fluxagent/db.password")
    assert (p.connect_timeout, p.statement_timeout) == (5, 120)
    defaults = config.load(write_config('[instance]\nbound_domain = "billing.example.com"\n', name="d.toml"))
    assert defaults.platform.password_file is None
    assert (defaults.platform.connect_timeout, defaults.platform.statement_timeout) == (10, 60)


def test_platform_timeouts_out_of_range_are_refused(write_config):
    problems = _problems(write_config('[instance]\nbound_domain = "billing.example.com"\n[platform]\n'
                                      'connect_timeout = "0s"\nstatement_timeout = "2h"\n'))
    assert any(p.endswith("platform.connect_timeout: '0s' is out of range (1s to 300s)") for p in problems)
    assert any("platform.statement_timeout: '2h' is out of range" in p for p in problems)


def test_a_database_password_stays_out_of_the_config_repr(write_config):
    cfg = config.load(write_config('[instance]\nbound_domain = "billing.example.com"\n[platform]\n'
                                   'database = "mysql://fa:Hunter2-Secret@db.example.net/fb"\n'))
    assert "Hunter2-Secret" not in repr(cfg) and "Hunter2-Secret" in cfg.platform.database


def test_the_example_config_documents_every_platform_key():
    doc = tomllib.loads((Path(__file__).parent.parent / "fluxagent.example.toml").read_text())
    assert set(doc["platform"]) - {"queries"} == set(config.SCHEMA["platform"])


# ---- relative SQLite paths: they work only from the service's working directory ----


def test_relative_sqlite_path_is_refused_at_load_with_the_four_slash_form_suggested(write_config):
    doc = base_config(Path("/var/lib/fluxagent"), "sqlite:///var/lib/fluxbilling/fluxbilling.db")
    problems = _problems(write_config(doc))
    assert len(problems) == 1 and "platform.database" in problems[0]
    assert "relative" in problems[0]
    assert "sqlite:////var/lib/fluxbilling/fluxbilling.db" in problems[0]


def test_absolute_sqlite_path_with_four_slashes_is_accepted(write_config):
    doc = base_config(Path("/var/lib/fluxagent"), "sqlite:////var/lib/fluxbilling/fluxbilling.db")
    assert config.load(write_config(doc)).platform.database == "sqlite:////var/lib/fluxbilling/fluxbilling.db"
