"""A small plant built from network namespaces, for tests that capture real traffic.

```
 ea-plc-T            ea-sw-T (bridge br0)             ea-hmi-T
 eth0 10.77.N.1 ── p-plc ──┐          ┌── p-hmi ── eth0 10.77.N.2
                           └── br0 ───┘
              tc mirred: p-plc ingress + egress ─▶ span0 ── cap0   ea-mon-T (no address)
```

The switch mirrors both directions of the PLC's port to ``span0`` (a SPAN port), so every
packet to or from the PLC reaches ``cap0`` in the monitor namespace exactly once, the way a
gateway on a mirror port sees a plant. ``T`` is random, so parallel runs never meet. Nothing is
created in the caller's namespace; :meth:`Plant.close` deletes the namespaces (and with them
every interface) and ends the processes started in them.

IPv6 is disabled in every namespace so router solicitations and MLD reports do not leak onto a
link a test expects to be idle.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

CAPTURE_IF = "cap0"
HOST_IF = "eth0"
MODBUS_PORT = 502


def missing_requirements() -> str | None:
    """Why this machine cannot build a plant, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "ss"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    return None


def _run(argv: Sequence[str]) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")


@dataclass
class Plant:
    tag: str = field(default_factory=lambda: f"{os.getpid() % 10000}{secrets.token_hex(3)}")
    subnet: int = field(default_factory=lambda: secrets.randbelow(254) + 1)
    procs: list[subprocess.Popen] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def plc(self) -> str:
        return f"ea-plc-{self.tag}"

    @property
    def hmi(self) -> str:
        return f"ea-hmi-{self.tag}"

    @property
    def sw(self) -> str:
        return f"ea-sw-{self.tag}"

    @property
    def mon(self) -> str:
        return f"ea-mon-{self.tag}"

    @property
    def plc_ip(self) -> str:
        return f"10.77.{self.subnet}.1"

    @property
    def hmi_ip(self) -> str:
        return f"10.77.{self.subnet}.2"

    def build(self) -> "Plant":
        for ns in (self.plc, self.hmi, self.sw, self.mon):
            _run(["ip", "netns", "add", ns])
            self.created.append(ns)
            for key in ("all", "default"):
                _run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                      f"net.ipv6.conf.{key}.disable_ipv6=1"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        sw = ["ip", "-n", self.sw]
        _run(sw + ["link", "add", "br0", "type", "bridge", "stp_state", "0"])
        _run(sw + ["link", "add", "p-plc", "type", "veth", "peer", "name", HOST_IF,
                   "netns", self.plc])
        _run(sw + ["link", "add", "p-hmi", "type", "veth", "peer", "name", HOST_IF,
                   "netns", self.hmi])
        _run(sw + ["link", "add", "span0", "type", "veth", "peer", "name", CAPTURE_IF,
                   "netns", self.mon])
        for port in ("p-plc", "p-hmi"):
            _run(sw + ["link", "set", port, "master", "br0"])
        for dev in ("br0", "p-plc", "p-hmi", "span0"):
            _run(sw + ["link", "set", dev, "up"])
        self._mirror("p-plc", "span0")
        for ns, ip in ((self.plc, self.plc_ip), (self.hmi, self.hmi_ip)):
            _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", HOST_IF])
            _run(["ip", "-n", ns, "link", "set", HOST_IF, "up"])
        _run(["ip", "-n", self.mon, "link", "set", CAPTURE_IF, "up"])
        self._wait_carrier()
        return self

    def _mirror(self, port: str, to: str) -> None:
        """Copy both directions of ``port`` to ``to``, as a switch's SPAN session does."""
        # Kernels without the matchall classifier exist: "u32 match u8 0 0" matches anything.
        mirror = ["protocol", "all", "u32", "match", "u8", "0", "0",
                  "action", "mirred", "egress", "mirror", "dev", to]
        tc = ["tc", "-n", self.sw]
        try:
            # clsact (CONFIG_NET_SCH_INGRESS) hooks both directions without a classful qdisc.
            _run(tc + ["qdisc", "add", "dev", port, "clsact"])
        except RuntimeError:
            _run(tc + ["qdisc", "add", "dev", port, "ingress"])
            _run(tc + ["filter", "add", "dev", port, "parent", "ffff:"] + mirror)
            # prio is often compiled out; htb is nearly always there.
            _run(tc + ["qdisc", "add", "dev", port, "root", "handle", "1:", "htb"])
            _run(tc + ["filter", "add", "dev", port, "parent", "1:"] + mirror)
        else:
            _run(tc + ["filter", "add", "dev", port, "ingress"] + mirror)
            _run(tc + ["filter", "add", "dev", port, "egress"] + mirror)

    def _wait_carrier(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(["ip", "-n", self.mon, "-br", "link", "show", CAPTURE_IF],
                                 capture_output=True, text=True).stdout
            if " UP " in f" {out} ":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{CAPTURE_IF} in {self.mon} did not come up: {out.strip()}")
            time.sleep(0.02)

    def cmd(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in ``ns``; ``ip netns exec`` execs it, so the pid is the program's."""
        proc = subprocess.Popen(self.cmd(ns, *argv), **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, ns: str, argv: Sequence[str], timeout: float = 20.0,
            **kwargs: Any) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(ns, *argv), capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def wait_listening(self, ns: str, port: int, timeout: float = 10.0) -> None:
        """Wait until a TCP socket listens on ``port`` in ``ns`` (checked without traffic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run(ns, ["ss", "-Hltn", f"sport = :{port}"]).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on port {port} in {ns}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self.created):
            # Anything still inside (a grandchild) would keep the namespace alive unnamed.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()

    def __enter__(self) -> "Plant":
        try:
            return self.build()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
