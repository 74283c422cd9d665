"""The storage lease and the write fence (`Database.campaign` and friends), on both backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from orbweaver.storage.db import Database, DbJobState, Fenced, JobGroup, open_database
from orbweaver.storage.db._sql import Cursor, SqlDatabase

LEASE = 30.0  # long: only the tests that wait for an expiry use a short one


@pytest.fixture
def pair(db_url: str) -> Iterator[tuple[Database, Database]]:
    """Two storages' connections to one database, neither leading yet."""
    a = open_database(db_url)
    b = open_database(db_url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_without_a_lease_nothing_leads(pair: tuple[Database, Database]) -> None:
    a, _ = pair
    assert a.session_id == 0
    lease = a.current_lease()
    assert not lease.live


def test_a_connection_without_a_session_is_not_fenced(pair: tuple[Database, Database]) -> None:
    a, b = pair
    b.campaign("b", "hostb:1", LEASE)
    rg = a.add_resource_group("g", b"pw")  # a tool's write while a storage leads
    assert b.verify_resource_group(b"pw", external_id="g")[0] == rg


def test_first_campaign_wins_and_the_second_stands_by(pair: tuple[Database, Database]) -> None:
    a, b = pair
    won = a.campaign("a", "hosta:1", LEASE)
    assert won.session_id == a.session_id > 0 and won.holder == "a"
    lost = b.campaign("b", "hostb:1", LEASE)
    assert b.session_id == 0
    assert (lost.session_id, lost.holder, lost.address) == (a.session_id, "a", "hosta:1")
    assert lost.live
    assert b.current_lease().address == "hosta:1"


def test_campaigning_again_keeps_the_session(pair: tuple[Database, Database]) -> None:
    a, _ = pair
    first = a.campaign("a", "hosta:1", LEASE).session_id
    assert a.campaign("a", "hosta:1", LEASE).session_id == first == a.session_id
    assert a.renew_lease(LEASE)


def test_an_expired_lease_nobody_took_is_resumed_with_its_session(
    pair: tuple[Database, Database],
) -> None:
    a, _ = pair
    session = a.campaign("a", "hosta:1", 0.05).session_id
    time.sleep(0.15)
    assert not a.current_lease().live
    assert a.campaign("a", "hosta:1", LEASE).session_id == session


def test_an_expired_lease_is_taken_over_and_the_old_session_fenced(
    pair: tuple[Database, Database],
) -> None:
    a, b = pair
    rg = a.add_resource_group("g", b"pw")
    old = a.campaign("a", "hosta:1", 0.05).session_id
    job, _ = a.register_job(rg, b"graph", b"inputs")
    time.sleep(0.15)
    taken = b.campaign("b", "hostb:1", LEASE)
    assert taken.session_id == b.session_id > old
    # Every write of the deposed session is refused, and nothing of it lands.
    with pytest.raises(Fenced, match=f"session {old} was superseded by session {b.session_id}"):
        a.start_job(job)
    with pytest.raises(Fenced):
        a.register_job(rg, b"graph", b"other")
    with pytest.raises(Fenced):  # a lone job: one statement that commits alone, fenced itself
        a.register_job_groups([JobGroup(rg, b"graph", [(b"lone", None)])])
    assert a.deposed_by == b.session_id
    assert b.get_state(job) == DbJobState.READY
    assert [j.id for j in b.list_jobs(resource_group_id=rg)] == [job]
    # Reads still work; the lease cannot be renewed or resumed.
    assert a.get_state(job) == DbJobState.READY
    assert not a.renew_lease(LEASE)
    assert a.campaign("a", "hosta:1", LEASE).session_id == b.session_id != a.session_id
    # The new leader writes.
    b.start_job(job)
    assert b.get_state(job) == DbJobState.RUNNING
    # A completion checks the fence in its own statement: refused all the same, nothing lands.
    with pytest.raises(Fenced):
        a.commit_outputs_many([(job, b"late", False)])
    assert b.get_state(job) == DbJobState.RUNNING
    assert b.commit_outputs_many([(job, b"out", False)]) == [DbJobState.SUCCEEDED]
    assert b.get_outputs(job) == b"out"


def test_a_released_lease_is_taken_at_once(pair: tuple[Database, Database]) -> None:
    a, b = pair
    a.campaign("a", "hosta:1", LEASE)
    assert b.campaign("b", "hostb:1", LEASE).holder == "a"
    a.release_lease()
    released = b.current_lease()
    assert (released.holder, released.live) == ("", False)
    assert b.campaign("b", "hostb:1", LEASE).holder == "b"
    assert b.session_id > a.session_id


def test_a_leading_open_takes_over_like_a_restart(db_url: str) -> None:
    a = open_database(db_url)
    try:
        a.campaign("a", "hosta:1", LEASE)
        b = open_database(db_url, lead=True)
        try:
            assert b.session_id > a.session_id
            assert not a.renew_lease(LEASE)
        finally:
            b.close()
    finally:
        a.close()


def test_concurrent_campaigns_elect_exactly_one(db_url: str) -> None:
    dbs = [open_database(db_url) for _ in range(4)]
    try:
        barrier = threading.Barrier(len(dbs))
        holders: list[str] = []

        def run(i: int) -> None:
            barrier.wait()
            holders.append(dbs[i].campaign(f"s{i}", f"h{i}:1", LEASE).holder)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(dbs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(holders) == len(dbs) and len(set(holders)) == 1
        leaders = [d for d in dbs if d.session_id != 0]
        assert len(leaders) == 1
    finally:
        for d in dbs:
            d.close()


def test_a_takeover_waits_for_the_write_under_way(db_url: str) -> None:
    """The deposed session's write that began before the takeover commits; the takeover waits
    for it (the shared fence lock), so no write of the old session lands after the new one
    began."""
    old = open_database(db_url)
    try:
        old.campaign("old", "old:1", 0.05)
        rg = old.add_resource_group("g", b"pw")
        job, _ = old.register_job(rg, b"graph", b"inputs")
        assert isinstance(old, SqlDatabase)
        inside = threading.Event()
        order: list[str] = []

        def slow_write(cur: Cursor) -> None:
            cur.execute("UPDATE jobs SET state = 'Running' WHERE id = ?", (job,))
            inside.set()
            time.sleep(0.5)
            order.append("old write committed")

        writer = threading.Thread(target=lambda: old._transaction(slow_write, write=True))
        writer.start()
        assert inside.wait(10)
        time.sleep(0.1)  # the lease has expired by now
        new = open_database(db_url)
        try:
            new.campaign("new", "new:1", LEASE)
            order.append("takeover")
            writer.join(10)
            assert order == ["old write committed", "takeover"]
            assert new.get_state(job) == DbJobState.RUNNING
            with pytest.raises(Fenced):
                old.set_state(job, int(DbJobState.SUCCEEDED))
        finally:
            new.close()
    finally:
        old.close()


def test_a_mariadb_transaction_left_idle_is_rolled_back_by_the_server(mariadb_url: str) -> None:
    """A leader cut off mid-transaction cannot hold its locks (and a takeover) for long."""
    db = open_database(mariadb_url)
    try:
        assert isinstance(db, SqlDatabase)

        def read(cur: Cursor) -> int:
            cur.execute("SELECT @@SESSION.idle_transaction_timeout")
            return int(cur.fetchone()[0])

        assert db._transaction(read, write=False) == 5
    finally:
        db.close()
