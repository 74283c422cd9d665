"""A learning Ethernet switch that holds every frame for a fixed delay: the fallback of
:meth:`support.netns.Network.delay` on kernels without the ``netem`` qdisc.

    ip netns exec SWITCH python delayswitch.py ONE_WAY_MS PORT [PORT ...]

Run in the switch namespace on the bridge's ports, once they have left the bridge. Frames are
read and written with ``AF_PACKET`` sockets carrying a virtio-net header (``PACKET_VNET_HDR``),
so segmentation-offloaded super-frames and partial checksums pass through as the bridge would
pass them. Each frame leaves ONE_WAY_MS after it arrived (so the round trip between two hosts
grows by twice that); a frame for a port that is down is dropped, as on a wire. Stops on
SIGTERM. Standard library only.
"""

from __future__ import annotations

import collections
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
VNET_HDR = 10  # struct virtio_net_hdr
FRAME_MAX = 65536 + VNET_HDR + 64


def main(argv: list[str]) -> int:
    delay = float(argv[0]) / 1000.0
    ports = argv[1:]
    socks: dict[int, tuple[str, socket.socket]] = {}
    for port in ports:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.bind((port, 0))
        s.setblocking(False)
        socks[s.fileno()] = (port, s)
    by_port = {port: s for port, s in socks.values()}
    macs: dict[bytes, str] = {}
    queue: collections.deque[tuple[float, str, bytes]] = collections.deque()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    poller = select.epoll()
    for fd in socks:
        poller.register(fd, select.EPOLLIN)
    print("ready", flush=True)
    while not stop:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 0.5
        for fd, _ in poller.poll(timeout):
            port, s = socks[fd]
            while True:
                try:
                    frame, addr = s.recvfrom(FRAME_MAX)
                except OSError:  # nothing more, or the port went down (a cut host)
                    break
                if addr[2] == PACKET_OUTGOING:  # our own transmission on this port
                    continue
                macs[frame[VNET_HDR + 6 : VNET_HDR + 12]] = port
                queue.append((time.monotonic() + delay, port, frame))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, source, frame = queue.popleft()
            dst = frame[VNET_HDR : VNET_HDR + 6]
            target = macs.get(dst) if not dst[0] & 1 else None  # group bit: flood
            outs = [target] if target is not None else [p for p in by_port if p != source]
            for out in outs:
                if out == source:
                    continue
                try:  # noqa: SIM105 (a hot loop: cheaper than contextlib.suppress)
                    by_port[out].send(frame)
                except OSError:  # the port is down (a cut host): the frame is lost
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
