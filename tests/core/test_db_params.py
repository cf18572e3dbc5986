"""The failover defaults every fieldhub connection gets (fieldhub.core.db.connection_params)."""

from __future__ import annotations

from psycopg import conninfo

from fieldhub.core import db

MULTI_HOST = "postgresql://app:secret@db1:5432,db2:5432,db3:5432/fieldhub?sslmode=require"


def test_a_writer_asks_libpq_for_the_primary_among_the_hosts() -> None:
    params = db.connection_params(MULTI_HOST, "write")
    assert params["host"] == "db1,db2,db3"
    assert params["port"] == "5432,5432,5432"
    assert params["target_session_attrs"] == "read-write"
    assert params["sslmode"] == "require"
    assert params["password"] == "secret"


def test_a_reader_prefers_a_standby() -> None:
    assert db.connection_params(MULTI_HOST, "read")["target_session_attrs"] == "prefer-standby"


def test_keepalives_and_user_timeout_notice_a_dead_host() -> None:
    params = db.connection_params(MULTI_HOST)
    assert {key: params[key] for key in db.TCP_DEFAULTS} == db.TCP_DEFAULTS
    assert int(params["tcp_user_timeout"]) <= 10_000


def test_what_the_url_says_wins() -> None:
    url = MULTI_HOST + "&target_session_attrs=any&keepalives_idle=30&tcp_user_timeout=0"
    params = db.connection_params(url, "write")
    assert params["target_session_attrs"] == "any"
    assert params["keepalives_idle"] == "30"
    assert params["tcp_user_timeout"] == "0"
    assert params["keepalives_count"] == db.TCP_DEFAULTS["keepalives_count"]


def test_the_conninfo_keeps_every_parameter() -> None:
    text = db.failover_conninfo(MULTI_HOST, "read")
    assert conninfo.conninfo_to_dict(text) == db.connection_params(MULTI_HOST, "read")


def test_the_server_gives_up_on_a_dead_client_as_soon() -> None:
    options = db.connection_params(MULTI_HOST)["options"]
    assert options.split() == [
        part for key, value in db.SERVER_TCP.items() for part in ("-c", f"{key}={value}")
    ]
    # The URL's own options come after (PostgreSQL applies them in order: the last wins).
    url = MULTI_HOST + "&options=-c%20tcp_keepalives_idle%3D60"
    assert db.connection_params(url)["options"].endswith("-c tcp_keepalives_idle=60")


def test_the_server_applies_them(database_url: str) -> None:
    with db.connect(database_url) as conn:
        shown = {key: conn.execute(f"SHOW {key}").fetchone() for key in db.SERVER_TCP}
    assert {key: row[key] if row else None for key, row in shown.items()} == db.SERVER_TCP
