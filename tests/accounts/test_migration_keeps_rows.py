"""A database made before ``accounts`` existed migrates without losing a row.

A scratch database gets the schema, bookkeeping and rows of branch start
(``tests/accounts/branch_start.py``, in a process of its own); ``manage.py migrate``
runs as an operator would run it; then every row of the moved tables and every row
pointing at them is read back, with its id and foreign keys. Rows are compared whole:
the only changes allowed are the ones the move is for (table names, the content types'
``app_label``, the audit events' ``target_type`` label).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from psycopg.rows import dict_row

from tests.accounts.branch_start import MOVED_MODELS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Tables of other apps whose rows point at the moved ones.
POINTING = (
    "account_emailaddress",
    "contracts_contract",
    "contracts_lineapikey",
    "billing_billingcustomer",
    "django_admin_log",
    "auth_group_permissions",
)


def _connect(database: str) -> psycopg.Connection[Any]:
    default = settings.DATABASES["default"]
    return psycopg.connect(
        host=default["HOST"] or None,
        port=default["PORT"] or None,
        user=default["USER"] or None,
        password=default["PASSWORD"] or None,
        dbname=database,
        autocommit=True,
        row_factory=dict_row,
    )


@pytest.fixture
def scratch_database() -> Iterator[str]:
    name = f"{settings.DATABASES['default']['TEST']['NAME']}_keeps_rows"
    with _connect("postgres") as server:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.execute(f'CREATE DATABASE "{name}"')
    yield name
    with _connect("postgres") as server:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(database: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.test_settings",
            "HASHGRID_DB_NAME_OVERRIDE": database,
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _rows(db: psycopg.Connection[Any], table: str) -> list[dict[str, Any]]:
    key = "group_id, permission_id" if table == "auth_group_permissions" else "id"
    return db.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()  # noqa: S608


def _snapshot(db: psycopg.Connection[Any], prefix: str) -> dict[str, list[dict[str, Any]]]:
    moved = [*MOVED_MODELS, "user_groups", "user_user_permissions"]
    return {
        **{table: _rows(db, f"{prefix}_{table}") for table in moved},
        **{table: _rows(db, table) for table in POINTING},
    }


def _content_types(db: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    rows = db.execute("SELECT app_label, model, id FROM django_content_type").fetchall()
    return {(row["app_label"], row["model"]): row["id"] for row in rows}


def _applied(db: psycopg.Connection[Any], app: str) -> list[str]:
    rows = db.execute("SELECT name FROM django_migrations WHERE app = %s ORDER BY id", [app])
    return [row["name"] for row in rows]


def test_an_existing_database_keeps_every_row(scratch_database):
    _run(scratch_database, "-m", "tests.accounts.branch_start")
    with _connect(scratch_database) as db:
        before = _snapshot(db, "marketplace")
        content_types_before = _content_types(db)
        assert _applied(db, "accounts") == []
        assert "0001_initial" in _applied(db, "marketplace")

    _run(scratch_database, "manage.py", "migrate", "--no-input")
    _run(scratch_database, "manage.py", "migrate", "--check")  # nothing left to apply

    with _connect(scratch_database) as db:
        after = _snapshot(db, "accounts")
        content_types_after = _content_types(db)
        old_tables = db.execute(
            "SELECT tablename FROM pg_tables WHERE tablename = ANY(%s)",
            [[f"marketplace_{model}" for model in MOVED_MODELS]],
        ).fetchall()
        new_organization = db.execute(
            "INSERT INTO accounts_organization (name, slug, is_buyer, is_partner, created_at) "
            "VALUES ('After', 'after', true, false, now()) RETURNING id"
        ).fetchone()
        applied = _applied(db, "accounts")

    # Every row is there, whole: ids, foreign keys, every column.
    for table in before:
        assert before[table], f"the scenario wrote no {table} row"
    assert [row.pop("target_type") for row in before["auditevent"]] == ["marketplace.apikey"]
    assert [row.pop("target_type") for row in after["auditevent"]] == ["accounts.apikey"]
    # Later migrations may add columns to these tables; the columns the rows had are kept.
    kept = {
        table: [{column: row[column] for column in before[table][0]} for row in rows]
        for table, rows in after.items()
    }
    assert kept == before

    # Content types kept their ids under the new label: permissions (the Finance group's
    # included, compared above), user permissions and the admin log still point at them.
    for model in MOVED_MODELS:
        assert (
            content_types_after[("accounts", model)] == content_types_before[("marketplace", model)]
        )
        assert ("marketplace", model) not in content_types_after
    assert (
        content_types_after[("marketplace", "inventoryversion")]
        == content_types_before[("marketplace", "inventoryversion")]
    )

    assert old_tables == []
    assert applied == ["0002_accounts_tables", "0001_initial"]
    # The id sequence came along with the table: a new row follows the old ones.
    assert new_organization is not None
    assert new_organization["id"] > max(row["id"] for row in before["organization"])


def _permission_links(db: psycopg.Connection[Any], prefix: str) -> dict[str, list[Any]]:
    """Who holds which permission and what the admin log points at, by label."""

    def labels(sql: str) -> list[tuple[Any, ...]]:
        return sorted(tuple(row.values()) for row in db.execute(sql).fetchall())

    permission = (
        "JOIN auth_permission p ON p.id = link.permission_id "
        "JOIN django_content_type ct ON ct.id = p.content_type_id"
    )
    return {
        "finance": labels(
            f"SELECT ct.app_label, p.codename FROM auth_group_permissions link {permission} "  # noqa: S608
            "JOIN auth_group g ON g.id = link.group_id WHERE g.name = 'Finance'"
        ),
        "users": labels(
            f"SELECT link.user_id, ct.app_label, p.codename "  # noqa: S608
            f"FROM {prefix}_user_user_permissions link {permission}"
        ),
        "log": labels(
            "SELECT l.id, ct.app_label, ct.model, l.object_id FROM django_admin_log l "
            "JOIN django_content_type ct ON ct.id = l.content_type_id"
        ),
    }


def test_content_types_made_early_by_a_partial_migrate_are_merged(scratch_database):
    """``migrate billing`` first (it applies nothing, but its ``post_migrate`` makes the
    ``accounts`` content types and permissions next to the old ones); the full migrate
    then folds the old rows into those: every grant and log entry follows."""
    _run(scratch_database, "-m", "tests.accounts.branch_start")
    with _connect(scratch_database) as db:
        before = _permission_links(db, "marketplace")
    _run(scratch_database, "manage.py", "migrate", "billing", "--no-input")
    with _connect(scratch_database) as db:
        both = _content_types(db)
    assert all(("accounts", m) in both and ("marketplace", m) in both for m in MOVED_MODELS)

    _run(scratch_database, "manage.py", "migrate", "--no-input")

    with _connect(scratch_database) as db:
        after = _permission_links(db, "accounts")
        content_types = _content_types(db)
        permissions_per_codename = db.execute(
            "SELECT count(*) AS n FROM auth_permission p JOIN django_content_type ct "
            "ON ct.id = p.content_type_id WHERE ct.app_label = 'accounts' "
            "GROUP BY p.codename ORDER BY n DESC LIMIT 1"
        ).fetchone()
    assert {("marketplace", "view_organization"), ("marketplace", "view_auditevent")} <= set(
        before["finance"]
    )
    [(staff_id, _, _)] = before["users"]
    assert before["users"] == [(staff_id, "marketplace", "change_apikey")]
    [(log_id, _, _, organization_id)] = before["log"]
    assert before["log"] == [(log_id, "marketplace", "organization", organization_id)]

    relabel = {"marketplace": "accounts"}
    assert after["finance"] == sorted(
        (relabel.get(app, app), codename) for app, codename in before["finance"]
    )
    assert after["users"] == [(staff_id, "accounts", "change_apikey")]
    assert after["log"] == [(log_id, "accounts", "organization", organization_id)]
    assert all(("marketplace", model) not in content_types for model in MOVED_MODELS)
    assert permissions_per_codename == {"n": 1}  # no permission left twice
