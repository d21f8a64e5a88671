"""Several hosts on one machine, for tests and benchmarks: Linux network namespaces on a bridge.

    with NamespaceHosts(["party0", "party1", "party2"]) as hosts:
        hosts.address("party0")             # "10.X.Y.1": that host's own IP
        hosts.gateway                       # "10.X.Y.254": this (the root) namespace on the bridge
        subprocess.Popen(hosts.command("party0", ["tf-puma", "party", ...]))

What it changes, and undoes on exit: a bridge `tfpb<id>` with the gateway IP in this namespace;
per host a namespace `tfp<id>-<i>` with its own loopback (up) and a veth pair, one end on the
bridge, the other (`eth0`, the host's IP) in the namespace. A namespace has its own ports, so each
host can use 127.0.0.1:PORT as a real machine would. The subnet 10.X.Y.0/24 is picked at random
among those no route of this machine uses. Needs root (CAP_NET_ADMIN) and iproute2's `ip`;
`available()` says whether this machine allows it.
"""

from __future__ import annotations

import os
import random
import subprocess
from typing import Sequence


class NamespaceError(RuntimeError):
    """Network namespaces cannot be made here (not root, no iproute2, a sandbox refusing it)."""


def _ip(*args: str, netns: str | None = None) -> str:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        raise NamespaceError("iproute2's `ip` is not installed") from None
    if done.returncode != 0:
        raise NamespaceError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")
    return done.stdout


def available() -> str | None:
    """None if namespaces can be made here, else the reason."""
    name = f"tfpcheck{os.getpid() % 100000}"
    try:
        _ip("netns", "add", name)
        _ip("netns", "del", name)
    except NamespaceError as err:
        return str(err)
    return None


_instances = 0


class NamespaceHosts:
    """Hosts named `names`, each a network namespace with its own IP on one bridge."""

    def __init__(self, names: Sequence[str]):
        if len(names) > 200:
            raise ValueError("at most 200 hosts")
        self.names = list(names)
        global _instances
        _instances += 1  # names unique per instance: a deleted namespace's links go later
        self._id = f"{os.getpid() % 1000:03d}{_instances % 100:02d}"
        used = _ip("-4", "route", "show", "table", "all")
        while True:
            x, y = random.randrange(16, 250), random.randrange(0, 256)
            if f"10.{x}.{y}." not in used:
                break
        self.subnet = f"10.{x}.{y}"
        self.gateway = f"{self.subnet}.254"
        self.bridge = f"tfpb{self._id}"
        self._made: list[tuple[str, ...]] = []  # what to delete, newest last

    def namespace(self, name: str) -> str:
        return f"tfp{self._id}-{self.names.index(name)}"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{self.names.index(name) + 1}"

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside host `name` (the process keeps its parent and environment)."""
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def veth(self, name: str) -> str:
        """The bridge-side interface of host `name` (for `tc` on its link)."""
        return f"tfpv{self._id}{self.names.index(name)}"[:15]

    def start(self) -> "NamespaceHosts":
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", "del", self.bridge))
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for name in self.names:
                ns = self.namespace(name)
                _ip("netns", "add", ns)
                self._made.append(("netns", "del", ns))
                _ip("link", "add", self.veth(name), "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
                self._made.append(("link", "del", self.veth(name)))
                _ip("link", "set", self.veth(name), "master", self.bridge, "up")
                _ip("addr", "add", f"{self.address(name)}/24", "dev", "eth0", netns=ns)
                _ip("link", "set", "eth0", "up", netns=ns)
                _ip("link", "set", "lo", "up", netns=ns)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Deletes every namespace and the bridge (their veth pairs go with them)."""
        for undo in reversed(self._made):
            try:
                _ip(*undo)
            except NamespaceError:
                pass
        self._made.clear()

    def __enter__(self) -> "NamespaceHosts":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
