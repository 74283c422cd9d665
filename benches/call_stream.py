"""What a call costs, unary or on an open stream: Orbweaver's own transport between two processes.

A server process serves the storage's inbound-queue service with a stand-in servicer (`PollAll`
answers an empty reply at once) through `orbweaver._rpc.add_servicer`, as storage does; this
process calls `PollAll` ``--calls`` times one after the other through `orbweaver._rpc.make_channel`
(a `LeaderChannel`), once with every call unary (``ORBWEAVER_CALL_STREAMS=false``) and once on a
`Calls` stream (`orbweaver._streamed`), alternating ``--rounds`` times. Prints, per mode, the round
trip and the CPU each process spent per call (medians over the rounds), in microseconds; ``--out``
writes them as JSON.

    python benches/call_stream.py --calls 3000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from orbweaver import _rpc, _streamed
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc


class _Queue(_streamed.CallsServed, pb_grpc.InboundQueueServiceServicer):
    def PollAll(self, request: pb.PollAllRequest, context: grpc.ServicerContext) -> Any:
        return pb.PollAllReply()


def serve(port_file: Path) -> None:
    server = _rpc.make_server("127.0.0.1:0", max_workers=16)
    _rpc.add_servicer(server.grpc_server, _Queue(), "InboundQueueService")
    server.start()
    port_file.write_text(str(server.port))
    server.grpc_server.wait_for_termination()


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(address: str, server_pid: int, calls: int, streams: bool) -> dict[str, float]:
    channel = _rpc.make_channel(address)
    assert isinstance(channel, _rpc.LeaderChannel)
    channel.streams = streams
    stub = pb_grpc.InboundQueueServiceStub(channel)
    request = pb.PollAllRequest(max_tasks=1)
    for _ in range(200):  # warm up (and open the stream)
        stub.PollAll(request, timeout=10)
    server0, client0, began = _cpu(server_pid), time.process_time(), time.perf_counter()
    for _ in range(calls):
        stub.PollAll(request, timeout=10)
    wall = time.perf_counter() - began
    result = {
        "round_trip_us": wall / calls * 1e6,
        "server_cpu_us": (_cpu(server_pid) - server0) / calls * 1e6,
        "client_cpu_us": (time.process_time() - client0) / calls * 1e6,
    }
    channel.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port_file = Path(f"/tmp/orbweaver-call-stream-{os.getpid()}.port")
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text()}"
        runs: dict[str, list[dict[str, float]]] = {"unary": [], "stream": []}
        for _ in range(args.rounds):
            for mode, results in runs.items():
                results.append(measure(address, server.pid, args.calls, mode == "stream"))
    finally:
        server.kill()
        port_file.unlink(missing_ok=True)
    medians = {
        mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for mode, rs in runs.items()
    }
    for mode, m in medians.items():
        print(
            f"{mode:6}  round trip {m['round_trip_us']:7.1f} us   server CPU "
            f"{m['server_cpu_us']:6.1f} us   client CPU {m['client_cpu_us']:6.1f} us per call"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "command": " ".join(["python", *sys.argv]),
                    "calls": args.calls,
                    "rounds": args.rounds,
                    "median": medians,
                    "runs": runs,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
