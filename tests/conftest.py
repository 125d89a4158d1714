"""Fixtures shared by every test folder: the store on SQLite and on a real PostgreSQL.

``postgres`` starts one throw-away cluster per test session (``harness.postgres``: initdb
into a temp dir, a free loopback port, never the system server) the first time a test
asks for it. ``store_url`` is parametrized over both stores: ``sqlite`` (a file in the
test's temp dir) and ``postgresql`` (a fresh database in that cluster, marked
``realparts``), so a test that takes it runs once on each.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import postgres as pg

_names = itertools.count(1)


# Suites that start many real processes at once (three nodes in network namespaces with
# Kamailio, PostgreSQL, Mosquitto and SIPp; a whole benchmark run) depend on a shared
# machine's timing and ports: a failure there is run once more, and only a second failure
# fails the run. pytest's -ra summary lists every rerun, so none is hidden.
_RERUN_ONCE = ("tests/cluster/", "tests/bench/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CONTROLROOM_NO_RERUN"):  # to see every first failure
        return
    for item in items:
        path = str(item.path).replace("\\", "/")
        if any(f"/{d}" in path for d in _RERUN_ONCE):
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))


def _plain_structlog() -> None:
    """structlog's default renderer prints exceptions with rich and their local variables:
    ~60 ms a traceback at idle and ~1 s under load, inside whatever loop logged it (a
    media tick, the router). The service's own logging prints plain tracebacks
    (controlroom.logs); tests get the same cheap rendering, so a test that logs failures
    does not measure the renderer."""
    import structlog

    structlog.configure(processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        structlog.dev.set_exc_info,
        structlog.processors.TimeStamper(fmt="%H:%M:%S.%f", utc=True),
        structlog.dev.ConsoleRenderer(colors=False,
                                      exception_formatter=structlog.dev.plain_traceback),
    ])


_plain_structlog()


@pytest.fixture(autouse=True)
def _structlog_config_restored() -> Iterator[None]:
    """Whatever a test (a CLI run in-process, a bench's main) configures for structlog is
    undone after it, so no later test logs through a stream pytest has since closed."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Postgres]:
    """A private PostgreSQL cluster for the whole session (skipped if not installed)."""
    if not pg.available():
        pytest.skip("PostgreSQL is not installed (Debian package 'postgresql')")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    with pg.Postgres() as cluster:
        yield cluster


@pytest.fixture
def pg_url(postgres: pg.Postgres) -> str:
    """A fresh, empty database in the session's cluster."""
    return postgres.database(f"t{next(_names)}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.realparts)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's store lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return str(request.getfixturevalue("pg_url"))
