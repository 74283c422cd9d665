"""A network of "hosts" made of Linux network namespaces, for tests that need several machines.

One *switch* namespace holds a Linux bridge; each host is a namespace whose ``eth0`` is one end of
a veth pair, the other end (``p-<host>``) a port of the bridge. Addresses come from
198.18.0.0/15 (reserved for benchmarking networks) and exist only inside these namespaces: the
root namespace is never touched, no interface is ever created in it. Every namespace is named
``owt<pid>x<hex>-<host>`` (the creating process's pid and a random suffix), so concurrent runs
never collide and :func:`sweep_leftovers` can remove what a dead run left behind.

Faults: :meth:`Network.cut` takes a host's bridge port down (its packets are lost both ways, as
with a pulled cable), :meth:`Network.restore` brings it back, :meth:`Network.delay` adds a
round-trip delay between any two hosts: ``netem`` on each host's ``eth0`` (half of it on each
end), or, on a kernel without ``netem``, the ports leave the bridge for a userspace switch that
holds every frame for half the delay (:mod:`support.delayswitch`). Needs root and ``iproute2``;
:func:`check_available` says why not otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SUBNET",
    "Host",
    "NetnsUnavailable",
    "Network",
    "check_available",
    "netem_available",
    "sweep_leftovers",
]

SUBNET = ipaddress.ip_network("198.18.0.0/15")
PREFIX = "owt"
_NAME = re.compile(rf"^{PREFIX}(\d+)x[0-9a-f]+-")
HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")  # p-<host> must fit IFNAMSIZ (15 characters)
INTERFACE = "eth0"


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no `ip`)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def check_available() -> None:
    """Raise :class:`NetnsUnavailable` naming what is missing."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root (the tests run as a normal user)")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command is missing (apt-get install iproute2)")
    probe = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` failed: {made.stderr.strip()}")
    _ip("netns", "del", probe, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete_namespace(name: str) -> None:
    """SIGKILL every process in the namespace, then delete it (its interfaces go with it)."""
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    _ip("netns", "del", name, check=False)


def sweep_leftovers() -> list[str]:
    """Delete the namespaces of runs whose process is gone; returns their names."""
    swept = []
    for name in _namespaces():
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            _delete_namespace(name)
            swept.append(name)
    return swept


def netem_available() -> bool:
    """Whether this kernel has the ``netem`` queueing discipline (`delay` needs it)."""
    probe = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}-netem"
    _ip("netns", "add", probe)
    try:
        _ip("-n", probe, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        tc = subprocess.run(
            ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "d0", "root", "netem"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return tc.returncode == 0
    finally:
        _delete_namespace(probe)


@dataclass(frozen=True)
class Host:
    """A host of the network: its namespace, its address on the switch, its bridge port."""

    name: str
    netns: str
    address: str
    port: str

    @property
    def prefix(self) -> list[str]:
        """Run a command on this host: ``[*host.prefix, command, ...]``."""
        return ["ip", "netns", "exec", self.netns]


class Network:
    """A switch and hosts attached to it; :meth:`close` (or the ``with`` block's end) kills every
    process left in the namespaces and deletes them, whatever happened before."""

    def __init__(self) -> None:
        check_available()
        self.run_id = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}"
        self.switch = f"{self.run_id}-switch"
        self.hosts: dict[str, Host] = {}
        self.cut_off: set[str] = set()
        self.delay_ms = 0.0
        self.netem = netem_available()
        self._delay_switch: subprocess.Popen[str] | None = None
        self._made: list[str] = []
        self._next = 2  # 198.18.0.1 is left for a gateway, should one be needed
        try:
            self._namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A new host named `name` (lowercase letters and digits, up to 12) with the next free
        address."""
        if not HOST_NAME.match(name):
            raise ValueError(f"host name {name!r}: lowercase letters and digits, at most 12")
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists already")
        address = str(SUBNET.network_address + self._next)
        self._next += 1
        host = Host(name, f"{self.run_id}-{name}", address, f"p-{name}")
        self._namespace(host.netns)
        # Both ends are created directly in their namespaces: nothing appears in the root one.
        _ip("link", "add", INTERFACE, "netns", host.netns, "type", "veth",
            "peer", "name", host.port, "netns", self.switch)  # fmt: skip
        _ip("-n", self.switch, "link", "set", host.port, "master", "br0")
        _ip("-n", self.switch, "link", "set", host.port, "up")
        _ip("-n", host.netns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", INTERFACE)
        _ip("-n", host.netns, "link", "set", INTERFACE, "up")
        self.hosts[name] = host
        if self.delay_ms:
            if not self.netem:
                raise RuntimeError("hosts cannot join while the userspace delay switch runs")
            self._set_delay(host, self.delay_ms)
        return host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def cut(self, name: str) -> None:
        """Cut `name` off the network: its bridge port goes down, every packet to or from it is
        lost until :meth:`restore`."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].port, "down")
        self.cut_off.add(name)

    def restore(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.hosts[name].port, "up")
        self.cut_off.discard(name)

    def delay(self, rtt_ms: float) -> None:
        """Add `rtt_ms` of round-trip delay between any two hosts (half on each host's egress);
        0 removes it."""
        if self.netem:
            for host in self.hosts.values():
                self._set_delay(host, rtt_ms)
        else:
            self._stop_delay_switch()
            if rtt_ms:
                self._start_delay_switch(rtt_ms / 2)
        self.delay_ms = rtt_ms

    def _start_delay_switch(self, one_way_ms: float) -> None:
        ports = [host.port for host in self.hosts.values()]
        for port in ports:
            _ip("-n", self.switch, "link", "set", port, "nomaster")
        self._delay_switch = subprocess.Popen(
            ["ip", "netns", "exec", self.switch, sys.executable,
             str(Path(__file__).with_name("delayswitch.py")), str(one_way_ms), *ports],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self._delay_switch.stdout is not None
        if self._delay_switch.stdout.readline().strip() != "ready":
            self._stop_delay_switch()
            raise RuntimeError("the userspace delay switch did not start")

    def _stop_delay_switch(self) -> None:
        proc, self._delay_switch = self._delay_switch, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        for host in self.hosts.values():
            _ip("-n", self.switch, "link", "set", host.port, "master", "br0")

    def _set_delay(self, host: Host, rtt_ms: float) -> None:
        tc = [*host.prefix, "tc", "qdisc"]
        if rtt_ms:
            change = [*tc, "replace", "dev", INTERFACE, "root", "netem", "delay", f"{rtt_ms / 2}ms"]
            proc = subprocess.run(change, capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"cannot add {rtt_ms / 2} ms of delay on {host.name} ({proc.stderr.strip()}):"
                    " does the kernel have the netem qdisc (CONFIG_NET_SCH_NETEM)?"
                )
        else:
            subprocess.run([*tc, "del", "dev", INTERFACE, "root"], capture_output=True,
                           timeout=30, check=False)  # fmt: skip

    def close(self) -> None:
        if self._delay_switch is not None:
            self._delay_switch.kill()
            self._delay_switch.wait(10)
            if self._delay_switch.stdout is not None:
                self._delay_switch.stdout.close()
            self._delay_switch = None
        for name in reversed(self._made):
            _delete_namespace(name)
        self._made.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
