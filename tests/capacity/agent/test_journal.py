from __future__ import annotations

from pathlib import Path

from capacity.agent.journal import PURGE_EVERY_CLAIMS, Journal
from capacity.agent.protocol import GENESIS_PREV_HASH, verify_chain
from tests.capacity.agent.verification import check_chain


def _fields(n: int) -> dict[str, object]:
    return {"gpu_uuid": "GPU-a", "busy_ms": n, "workload": {"kind": "idle", "ref": None}}


def test_append_chains_records_and_pages_them_oldest_first(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3")
    journal.append([_fields(1), _fields(2), _fields(3)], meta={"cursor": {"k": 3}})

    page = journal.page(after=1, limit=1)

    assert [r["seq"] for r in page.records] == [2]
    assert page.head_seq == 3
    everything = journal.page(after=0, limit=10).records
    assert check_chain(everything, prev_hash=GENESIS_PREV_HASH, first_seq=1) == page.head_hash
    assert journal.get_meta("cursor") == {"k": 3}
    assert journal.page(after=3, limit=10).records == []


def test_reopening_keeps_epoch_and_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal.open(path)
    epoch = journal.epoch
    journal.append([_fields(1), _fields(2)])
    journal.close()

    reopened = Journal.open(path)
    reopened.append([_fields(3)])
    records = reopened.page(after=0, limit=10).records

    assert reopened.epoch == epoch
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert verify_chain(records, GENESIS_PREV_HASH, after_seq=0).ok


def test_a_new_journal_file_is_a_new_epoch_starting_at_seq_1(tmp_path: Path) -> None:
    old = Journal.open(tmp_path / "old.sqlite3")
    old.append([_fields(1)])
    new = Journal.open(tmp_path / "new.sqlite3")
    new.append([_fields(1)])

    assert new.epoch != old.epoch
    assert new.head()[0] == 1
    assert new.page(after=0, limit=1).records[0]["prev_hash"] == GENESIS_PREV_HASH


def test_a_claimed_receipt_stays_claimed_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal.open(path)

    assert journal.claim_receipt(rid="a" * 32, iat=1000, forget_before=0) is True
    assert journal.claim_receipt(rid="a" * 32, iat=1000, forget_before=0) is False
    journal.close()
    reopened = Journal.open(path)

    assert reopened.claim_receipt(rid="a" * 32, iat=1000, forget_before=0) is False
    assert reopened.claim_receipt(rid="b" * 32, iat=1000, forget_before=0) is True
    assert reopened.page(after=0, limit=10).records == []  # claims are not records


def test_claims_too_old_to_replay_are_purged(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3")
    journal.claim_receipt(rid="0" * 32, iat=100, forget_before=0)

    for number in range(1, PURGE_EVERY_CLAIMS):  # the last of these purges
        journal.claim_receipt(rid=f"{number:032x}", iat=5000, forget_before=1000)

    # Forgotten: its iat is older than any receipt the agent still honours.
    assert journal.claim_receipt(rid="0" * 32, iat=100, forget_before=1000) is True
    assert journal.claim_receipt(rid=f"{1:032x}", iat=5000, forget_before=1000) is False
