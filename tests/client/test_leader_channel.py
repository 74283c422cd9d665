"""`LeaderChannel`: a channel over several storage addresses that follows the leader a standby
names, with real gRPC servers (one serving, others refusing as standbys do)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from client_support import FakeStorage

from orbweaver import errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import LeaderChannel, call_with_retry, make_channel


def session(channel: grpc.Channel) -> int:
    reply = pb_grpc.SessionManagementServiceStub(channel).GetSession(pb.Void(), timeout=5)
    return int(reply.session_id)


def test_a_standby_sends_the_call_on_to_the_leader_it_names(storages: list[FakeStorage]) -> None:
    leader = FakeStorage(7)
    standby = FakeStorage(0, refusal=leader.address)
    storages += [leader, standby]
    channel = make_channel(f"{standby.address},{leader.address}")
    assert isinstance(channel, LeaderChannel)
    assert session(channel) == 7  # one call: refused (nothing ran), sent on at once
    assert standby.servicer.calls == 0 and leader.servicer.calls == 1
    assert channel.target == leader.address
    channel.close()


def test_a_named_leader_that_cannot_be_reached_does_not_loop_back(
    storages: list[FakeStorage],
) -> None:
    """The standby names an address this client cannot reach (NAT, published ports): the
    channel moves on after the standby, to the next address it was given."""
    leader = FakeStorage(9)
    standby = FakeStorage(0, refusal="unreachable.invalid:1")
    storages += [leader, standby]
    channel = make_channel(f"{standby.address},{leader.address}")
    for _ in range(5):
        try:
            assert session(channel) == 9
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
    else:
        raise AssertionError("never reached the leader")
    assert channel.target == leader.address
    channel.close()


def test_an_address_that_is_down_is_skipped(storages: list[FakeStorage]) -> None:
    leader = FakeStorage(3)
    storages.append(leader)
    down = FakeStorage(0)
    down.server.stop(0)  # nothing listens there any more
    channel = make_channel(f"{down.address},{leader.address}")
    with pytest.raises(grpc.RpcError):
        session(channel)  # raised: the caller's retry policy decides
    assert session(channel) == 3  # the retry goes to the next address
    channel.close()


def test_while_nobody_leads_the_standby_says_so(storages: list[FakeStorage]) -> None:
    standby = FakeStorage(0, refusal="")
    storages.append(standby)
    channel = make_channel(standby.address)
    with pytest.raises(grpc.RpcError) as refused:
        session(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "election" in (refused.value.details() or "")
    channel.close()


def test_retries_through_an_election_run_past_the_connect_deadline(
    storages: list[FakeStorage],
) -> None:
    """A standby's answer proves the address right: a call that would give up after the short
    connect deadline goes on retrying, to `answered_deadline`, while nobody leads; it succeeds
    once the storage leads. An address where nothing answers still fails fast."""
    storage = FakeStorage(5, refusal="")
    storages.append(storage)
    channel = make_channel(storage.address)
    timer = threading.Timer(1.0, lambda: setattr(storage.gate, "value", None))  # elected
    timer.start()
    started = time.monotonic()
    reply = call_with_retry(
        lambda: session(channel), deadline=0.2, answered_deadline=30.0, what="get session"
    )
    assert reply == 5 and time.monotonic() - started >= 0.9
    timer.join()
    channel.close()

    down = FakeStorage(0)
    down.server.stop(0)
    channel = make_channel(down.address)
    started = time.monotonic()
    with pytest.raises(errors.Unavailable):
        call_with_retry(
            lambda: session(channel), deadline=0.2, answered_deadline=30.0, what="get session"
        )
    assert time.monotonic() - started < 10
    channel.close()


def test_a_blank_address_list_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument, match="no address"):
        make_channel(" , ")
