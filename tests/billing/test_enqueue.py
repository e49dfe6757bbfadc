"""Services queue billing's tasks by name (``billing.enqueue``), never importing
``billing.tasks``: every name is a registered task, reached once the transaction commits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery import current_app

from billing import enqueue, tasks

QUEUED = [
    (enqueue.charge_invoice_on_commit, enqueue.CHARGE_INVOICE, tasks.charge_invoice),
    (enqueue.refund_credit_note_on_commit, enqueue.REFUND_CREDIT_NOTE, tasks.refund_credit_note),
]


@pytest.mark.parametrize(("_queue", "name", "task"), QUEUED)
def test_every_name_is_the_registered_task(_queue, name, task):
    assert task.name == name
    assert current_app.tasks[name].name == name


def test_a_web_process_has_the_tasks_registered():
    """Django set up, nothing imported ``billing.tasks``: as in a web process."""
    names = [name for _queue, name, _task in QUEUED]
    check = (
        "import django; django.setup(); from celery import current_app; "
        f"print(sorted(n for n in {names!r} if n in current_app.tasks))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.test_settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(sorted(names))


@pytest.mark.django_db
@pytest.mark.parametrize(("queue", "name", "_task"), QUEUED)
def test_the_task_is_queued_after_commit_with_the_id(
    queue, name, _task, monkeypatch, django_capture_on_commit_callbacks
):
    sent: list[tuple[int, ...]] = []
    monkeypatch.setattr(current_app.tasks[name], "delay", lambda *args: sent.append(args))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        queue(42)
    assert sent == []
    assert len(callbacks) == 1
    callbacks[0]()
    assert sent == [(42,)]
