"""Server database URLs: redaction, parsing, password precedence and the MySQL connect arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluxagent.config import PlatformConfig
from fluxagent.errors import EXIT_CONFIG, SourceConfigError
from fluxagent.sources import dburl
from fluxagent.sources.mysql import connect_args


@pytest.mark.parametrize("url, shown", [
    ("postgresql://fa:s3cret@db.example.net:5432/fb", "postgresql://fa:***@db.example.net:5432/fb"),
    ("mysql://fa:p%40ss%3Aw0rd@10.0.0.5/fb?unix_socket=/run/m.sock", "mysql://fa:***@10.0.0.5/fb?unix_socket=/run/m.sock"),
    ("postgresql://fa@db.example.net/fb", "postgresql://fa@db.example.net/fb"),
    ("postgresql:///fb?host=/run/postgresql", "postgresql:///fb?host=/run/postgresql"),
])
def test_urls_are_shown_with_the_password_masked(url, shown):
    assert dburl.redact(url) == shown
    assert dburl.parse(url).shown == shown
    assert "***" not in dburl.without_password(url) and ":s3cret" not in dburl.without_password(url)


def test_a_percent_encoded_password_is_decoded_and_kept_out_of_repr():
    t = dburl.parse("mariadb://fa:p%40ss%3Aw0rd@db.example.net:3307/fluxbilling")
    assert (t.engine, t.host, t.port, t.user, t.database) == ("mysql", "db.example.net", 3307, "fa", "fluxbilling")
    assert t.password == "p@ss:w0rd" and "p@ss" not in repr(t)


@pytest.mark.parametrize("url, detail", [
    ("mysql://fa@db.example.net", "names no database"),
    ("postgresql://fa@db.example.net:99999/fb", "invalid port"),
    ("oracle://fa@db.example.net/fb", "not a postgresql:// or mysql:// URL"),
])
def test_unusable_urls_are_configuration_errors(url, detail):
    with pytest.raises(SourceConfigError, match=detail) as info:
        dburl.parse(url)
    assert info.value.exit_code == EXIT_CONFIG


def test_the_password_file_gives_the_first_line_and_must_be_private(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("first-line\nsecond\n")
    pw.chmod(0o600)
    assert dburl.read_password_file(pw) == "first-line"
    pw.chmod(0o640)
    with pytest.raises(SourceConfigError, match="not private: mode 0640"):
        dburl.read_password_file(pw)
    empty = tmp_path / "empty"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(SourceConfigError, match="is empty"):
        dburl.read_password_file(empty)
    with pytest.raises(SourceConfigError, match="does not exist"):
        dburl.read_password_file(tmp_path / "absent")


def test_mysql_uses_my_cnf_only_when_no_password_is_configured(tmp_path):
    (tmp_path / ".my.cnf").write_text("[client]\npassword=x\n")
    cfg = PlatformConfig(database="mysql://fa@db.example.net/fb")
    t = dburl.parse(cfg.database)
    assert connect_args(cfg, t, None, tmp_path)["read_default_file"] == str(tmp_path / ".my.cnf")
    with_pw = connect_args(cfg, t, "given", tmp_path)
    assert with_pw["password"] == "given" and "read_default_file" not in with_pw
    assert "read_default_file" not in connect_args(cfg, t, None, tmp_path / "nowhere")
    assert (with_pw["host"], with_pw["port"], with_pw["database"]) == ("db.example.net", 3306, "fb")


def test_mysql_unix_socket_and_unknown_parameters(tmp_path: Path):
    cfg = PlatformConfig(database="mysql://fa@localhost/fb?unix_socket=/run/mysqld/mysqld.sock")
    args = connect_args(cfg, dburl.parse(cfg.database), None, tmp_path)
    assert args["unix_socket"] == "/run/mysqld/mysqld.sock" and "host" not in args
    bad = PlatformConfig(database="mysql://fa@localhost/fb?sslmode=require")
    with pytest.raises(SourceConfigError, match="unknown parameter 'sslmode'"):
        connect_args(bad, dburl.parse(bad.database), None, tmp_path)
