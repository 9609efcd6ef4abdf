"""Real industrial stacks from PyPI talking to each other, watched live by the agent.

Each test module starts a server from a real stack in the PLC namespace of a plant
(``tests/capture/netns.py``) and drives it with a real client from the HMI namespace, while in
the monitor namespace, on the switch's mirror port,

- ``edge-agent run --interface cap0`` captures live and writes window summaries, findings and
  the asset inventory into its state directory, and
- a second libpcap handle (bare pcapy, independent of the agent's capture code) writes what
  crossed the wire to a pcap file, so ``edge-agent decode`` can show every record.

The tests then hold the records against what the client did and the inventory against what
the server announced. A stack that cannot be imported is skipped with the reason.
"""
from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from edge_agent.summary.sign import claims
from tests.conftest import running_summaries, wait_for_agent
from edge_agent.transport.spool import Spool
from tests.capture.netns import CAPTURE_IF, HOST_IF, Plant, missing_requirements

ROOT = Path(__file__).resolve().parents[2]
# The interpreter running the tests is the virtual environment's: the stacks and the agent
# are installed there, and every namespace runs the same one.
PYTHON = sys.executable
_SCRIPT = Path(PYTHON).with_name("edge-agent")
AGENT = [str(_SCRIPT)] if _SCRIPT.exists() else [PYTHON, "-m", "edge_agent"]

# The pcap writer's libpcap read timeout (ms): how long a ring block may wait before it is
# handed over, so how long the writer needs to drain after the traffic.
PCAP_TIMEOUT_MS = 100

# A pcap writer on the mirror port with its own libpcap handle: prints "ready", writes every
# frame until a line arrives on stdin, drains what the kernel holds, prints the frame count.
PCAP_WRITER = r"""
import select, sys, threading
import pcapy

iface, path, to_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
cap = pcapy.open_live(iface, 65535, 1, to_ms)
cap.setnonblock(1)
dumper = cap.dump_open(path)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
count = 0

def write(hdr, data):
    global count
    count += 1
    dumper.dump(hdr, data)

print("ready", flush=True)
fd = cap.getfd()
while not stop.is_set():
    select.select([fd], [], [], to_ms / 1000)
    cap.dispatch(-1, write)
while cap.dispatch(-1, write) > 0:
    pass
dumper.close()
print(count, flush=True)
"""


def require(*modules: str) -> None:
    """Skip, naming the distribution, when a stack is not importable here."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed in {PYTHON}: pip install -e '.[test]'")


def snippet(code: str) -> str:
    return textwrap.dedent(code).strip() + "\n"


def run_py(plant: Plant, ns: str, code: str, *args: Any, timeout: float = 30.0,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run a Python snippet in ``ns`` with the tests' interpreter; its last stdout line is
    usually JSON (see :func:`last_json`)."""
    proc = plant.run(ns, [PYTHON, "-c", snippet(code), *map(str, args)], timeout=timeout,
                     cwd=ROOT)
    if check and proc.returncode:
        pytest.fail(f"snippet in {ns} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    return proc


def last_json(proc: subprocess.CompletedProcess) -> Any:
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1])


def start_py(plant: Plant, ns: str, code: str, *args: Any, log: Path) -> subprocess.Popen:
    """Start a Python snippet (a server) in ``ns``; its output goes to ``log``."""
    with open(log, "wb") as out:      # a file, not a pipe nobody reads
        return plant.popen(ns, [PYTHON, "-u", "-c", snippet(code), *map(str, args)],
                           stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def start_server(plant: Plant, code: str, *args: Any, log: Path, port: int | None = None,
                 udp: bool = False, ready: Callable[[], bool] | None = None,
                 timeout: float = 15.0) -> subprocess.Popen:
    """A server snippet in the PLC namespace, waited for until it listens on TCP ``port``
    (or has UDP ``port`` bound), or until ``ready()`` holds."""
    proc = start_py(plant, plant.plc, code, *args, log=log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        if port is not None:
            out = plant.run(plant.plc, ["ss", "-Hlun" if udp else "-Hltn",
                                        f"sport = :{port}"]).stdout
            if out.strip():
                return proc
        elif ready is None or ready():
            return proc
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server not ready in {timeout} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def add_host(plant: Plant, name: str, last_octet: int) -> tuple[str, str]:
    """Another host on the plant switch (not mirrored itself: its traffic to the PLC is seen
    on the PLC's port). Returns (namespace, ip). :meth:`Plant.close` deletes it."""
    ns = f"ea-{name}-{plant.tag}"
    ip = f"10.77.{plant.subnet}.{last_octet}"
    port = f"p-{name}"[:15]

    def sh(*argv: str) -> None:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")

    sh("ip", "netns", "add", ns)
    plant.created.append(ns)
    for key in ("all", "default"):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", plant.sw, "link", "add", port, "type", "veth", "peer", "name", HOST_IF,
       "netns", ns)
    sh("ip", "-n", plant.sw, "link", "set", port, "master", "br0")
    sh("ip", "-n", plant.sw, "link", "set", port, "up")
    sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", HOST_IF)
    sh("ip", "-n", ns, "link", "set", HOST_IF, "up")
    return ns, ip


@dataclass
class Capture:
    """What the agent and the pcap writer saw of one exchange."""

    state: Path
    pcap: Path
    frames: int
    stderr: str
    summaries: list[dict[str, Any]]
    _records: list[dict[str, Any]] | None = field(default=None, repr=False)
    _assets: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def records(self) -> list[dict[str, Any]]:
        """``edge-agent decode`` of exactly what crossed the mirror port."""
        if self._records is None:
            proc = subprocess.run(AGENT + ["decode", str(self.pcap)], capture_output=True,
                                  text=True, timeout=60, cwd=ROOT)
            assert proc.returncode == 0, proc.stderr[-3000:]
            self._records = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
        return self._records

    def of(self, proto: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["proto"] == proto]

    @property
    def assets(self) -> list[dict[str, Any]]:
        """``edge-agent assets --json`` on the live agent's state directory."""
        if self._assets is None:
            proc = subprocess.run(AGENT + ["assets", "--json", "--state-dir", str(self.state)],
                                  capture_output=True, text=True, timeout=30, cwd=ROOT)
            assert proc.returncode == 0, proc.stderr[-3000:]
            self._assets = json.loads(proc.stdout)
        return self._assets

    def asset(self, ip: str) -> dict[str, Any]:
        found = [a for a in self.assets if a["ip"] == ip]
        assert found, f"{ip} not in the inventory: {[a['key'] for a in self.assets]}"
        return found[0]

    @property
    def findings(self) -> list[dict[str, Any]]:
        return [f for s in self.summaries for f in s.get("findings", ())]

    def messages(self, proto: str) -> int:
        """Messages of ``proto`` the live agent counted over all its windows."""
        return sum(s["protocols"].get(proto, {}).get("messages", 0) for s in self.summaries)

    def live_flows(self, proto: str) -> list[dict[str, Any]]:
        return [f for s in self.summaries for f in s["flows"] if f["proto"] == proto]


class Watch:
    """The live agent and the pcap writer on the mirror port, for one exchange.

    ``with Watch(plant, dir) as w: <traffic>``; after the block, ``w.result`` holds the
    :class:`Capture`. The agent is stopped with SIGTERM, like a service, once it has closed a
    window that ends after the traffic, so every packet went through it.
    """

    def __init__(self, plant: Plant, where: Path, config: str = "") -> None:
        self.plant = plant
        self.state = where / "state"
        self.pcap = where / "wire.pcap"
        self.log = where / "agent.stderr"
        self.config = where / "agent.toml"
        self.config.write_text(snippet(config) if config else "")
        self.result: Capture | None = None
        self.agent: subprocess.Popen | None = None
        self.writer: subprocess.Popen | None = None

    def __enter__(self) -> "Watch":
        plant = self.plant
        self.errfile = open(self.log, "w+b")
        self.agent = plant.popen(plant.mon, AGENT + [
            "run", "--interface", CAPTURE_IF, "--state-dir", str(self.state), "--window", "1",
            "--config", str(self.config)], stdout=subprocess.DEVNULL, stderr=self.errfile,
            cwd=ROOT)
        self.writer = plant.popen(plant.mon, [PYTHON, "-c", PCAP_WRITER, CAPTURE_IF,
                                              str(self.pcap), str(PCAP_TIMEOUT_MS)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert self.writer.stdout is not None and self.writer.stderr is not None
            line = self.writer.stdout.readline().strip()
            if line != "ready":
                pytest.fail(f"pcap writer did not start: {self.writer.stderr.read()}")
            self.wait_for(lambda: "capturing on" in self.stderr(), 20, "start capturing")
        except BaseException:
            self._kill()
            raise
        return self

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        wait_for_agent(self.agent, self.stderr, cond, timeout, what)

    def peek(self) -> list[dict[str, Any]]:
        """Summaries stored so far, read without writing to the running agent's spool."""
        return running_summaries(self.state)

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            if exc_type is None:
                self.result = self._finish()
        finally:
            self._kill()

    def _finish(self) -> Capture:
        assert self.agent is not None and self.writer is not None
        done = time.time()
        # A window that ends past the traffic plus libpcap's block timeout (0.5 s in the
        # agent) is only closed once everything before it was processed.
        self.wait_for(lambda: any(s["window"]["end"] >= done + 0.75 for s in self.peek()), 8,
                      "summarise the window after the traffic")
        out, err = self.writer.communicate("stop\n", timeout=10)
        if self.writer.returncode:
            pytest.fail(f"pcap writer failed: {err[-2000:]}")
        self.agent.send_signal(signal.SIGTERM)
        try:
            rc = self.agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        text = self.stderr()
        assert rc == 0, f"agent exit {rc}:\n{text}"
        assert "Traceback" not in text, text
        spool = Spool(self.state / "spool.sqlite")
        try:
            docs = [claims(doc) for _, doc in spool.documents(kind="summary")]
        finally:
            spool.close()
        caps = [d["health"]["capture"] for d in docs]
        assert caps and all(c["dropped"] == 0 and c["if_dropped"] == 0 for c in caps), caps
        frames = int(out.strip().splitlines()[-1])
        assert frames > 0, "the pcap writer saw nothing on the mirror port"
        return Capture(self.state, self.pcap, frames, text, docs)

    def _kill(self) -> None:
        for proc in (self.writer, self.agent):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if not self.errfile.closed:
            self.errfile.close()


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    """A fresh plant per stack module, deleted (with every process in it) afterwards."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with Plant() as p:
        yield p


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
