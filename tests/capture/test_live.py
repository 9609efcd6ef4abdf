"""Live capture with real libpcap on a mirror port, with real Modbus traffic from pymodbus.

The plant (see ``netns.py``): a pymodbus server in the PLC namespace, a pymodbus client in the
HMI namespace, a bridge that mirrors the PLC's port to ``cap0`` in a monitor namespace, where
the agent (or a bare :class:`LiveSource`) listens like a gateway on a SPAN port. Every process
runs through ``ip netns exec``; the test process itself never leaves its own namespace.
"""
from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from edge_agent.decode import discover
from edge_agent.summary.sign import claims
from tests.conftest import running_summaries, wait_for_agent
from edge_agent.transport.spool import Spool

from .netns import CAPTURE_IF, MODBUS_PORT, Plant, missing_requirements

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
_SCRIPT = Path(PYTHON).with_name("edge-agent")
AGENT = [str(_SCRIPT)] if _SCRIPT.exists() else [PYTHON, "-m", "edge_agent"]

# What MODBUS_CLIENT does: 10 reads of holding registers, 3 register writes, 2 coil reads and
# one read past the end of the register block, which the server answers with exception 2.
CLIENT_REQUESTS = 10 + 3 + 2 + 1
CLIENT_MESSAGES = 2 * CLIENT_REQUESTS            # every request is answered

MODBUS_SERVER = r"""
import sys
from pymodbus.server import StartTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

host, port = sys.argv[1], int(sys.argv[2])
device = SimDevice(id=1, simdata=(
    [SimData(0, count=16, values=True, datatype=DataType.BITS)],          # coils
    [SimData(0, count=16, values=False, datatype=DataType.BITS)],         # discrete inputs
    [SimData(0, values=list(range(100, 120)), datatype=DataType.REGISTERS)],  # holding
    [SimData(0, values=list(range(20)), datatype=DataType.REGISTERS)],    # input
))
StartTcpServer(device, address=(host, port))
"""

MODBUS_CLIENT = r"""
import json, sys, time
from pymodbus.client import ModbusTcpClient

host, port, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
client = ModbusTcpClient(host, port=port, timeout=3, retries=0)
if not client.connect():
    sys.exit(f"cannot connect to {host}:{port}")
done = {"requests": 0, "ok": 0, "exceptions": []}

def call(fn, *args, **kw):
    done["requests"] += 1
    rsp = fn(*args, device_id=1, **kw)
    if rsp.isError():
        done["exceptions"].append(rsp.exception_code)
    else:
        done["ok"] += 1
    time.sleep(pause)
    return rsp

for _ in range(10):
    assert call(client.read_holding_registers, 0, count=10).registers[:2] == [100, 101]
for i in range(3):
    call(client.write_register, 10 + i, 1000 + i)
for _ in range(2):
    call(client.read_coils, 0, count=8)
call(client.read_holding_registers, 5000, count=2)       # illegal data address
client.close()
print(json.dumps(done))
"""

# Runs LiveSource in the monitor namespace until a line arrives on stdin, then reports.
LIVE_PROBE = r"""
import json, sys, threading, time
from edge_agent.capture.source import TICK, LiveSource

iface, bpf, snaplen, tick = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
src = LiveSource(iface, bpf=bpf, snaplen=snaplen, tick=tick)
stop = {}

def stopper():
    sys.stdin.readline()
    stop["at"] = time.monotonic()
    src.stop()

threading.Thread(target=stopper, daemon=True).start()
print("ready", flush=True)
frames, ticks = [], []
for ts, linktype, frame in src:
    if linktype == TICK:
        ticks.append(ts)
    else:
        frames.append([ts, linktype, frame.hex()])
ended = time.monotonic()
print(json.dumps({"frames": frames, "ticks": ticks, "stats": src.update_stats().as_dict(),
                  "stop_latency": ended - stop["at"]}))
"""

# ICMP echo without the ping binary: a raw socket, answered by the peer's kernel.
PING = r"""
import os, socket, struct, sys, time

def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

dst, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.settimeout(2)
ident, answered = os.getpid() & 0xFFFF, 0
for seq in range(count):
    payload = bytes(i & 0xFF for i in range(size))
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    sock.sendto(struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), ident, seq) + payload,
                (dst, 0))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        data = sock.recv(65535)
        ihl = (data[0] & 0x0F) * 4
        kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if kind == 0 and rid == ident and rseq == seq:
            answered += 1
            break
print(answered)
"""


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with Plant() as p:
        yield p


@pytest.fixture(scope="module")
def modbus_server(plant: Plant, tmp_path_factory: pytest.TempPathFactory) -> Plant:
    try:
        import pymodbus  # noqa: F401
    except ImportError:
        pytest.fail("pymodbus is missing: pip install -e '.[test]'")
    log = tmp_path_factory.mktemp("plc") / "server.stderr"
    with open(log, "wb") as err:       # a file, not a pipe nobody reads, for its log lines
        proc = plant.popen(plant.plc, [PYTHON, "-c", MODBUS_SERVER, plant.plc_ip,
                                       str(MODBUS_PORT)],
                           stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    try:
        plant.wait_listening(plant.plc, MODBUS_PORT)
    except RuntimeError:
        proc.kill()
        pytest.fail(f"Modbus server did not start: {log.read_text(errors='replace')[-2000:]}")
    return plant


def run_client(plant: Plant, pause: float = 0.08) -> dict[str, Any]:
    proc = plant.run(plant.hmi, [PYTHON, "-c", MODBUS_CLIENT, plant.plc_ip, str(MODBUS_PORT),
                                 str(pause)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    # The stack did what we think it did, so the agent's counts can be held against it.
    assert done == {"requests": CLIENT_REQUESTS, "ok": CLIENT_REQUESTS - 1, "exceptions": [2]}
    return done


def ping(plant: Plant, count: int, size: int) -> None:
    proc = plant.run(plant.hmi, [PYTHON, "-c", PING, plant.plc_ip, str(count), str(size)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) == count


class Agent:
    """``edge-agent run`` on the mirror port, in the monitor namespace."""

    def __init__(self, plant: Plant, state: Path) -> None:
        self.state = state
        self.log = state.parent / f"{state.name}.stderr"
        self.errfile = open(self.log, "w+b")
        self.proc = plant.popen(plant.mon, AGENT + ["run", "--interface", CAPTURE_IF,
                                                    "--state-dir", str(state), "--window", "1"],
                                stdout=subprocess.DEVNULL, stderr=self.errfile, cwd=ROOT)

    def wait_ready(self) -> None:
        # The signal handlers are installed before this line is logged.
        self.wait_for(lambda: "capturing on" in self.stderr(), 20, "start capturing")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, cond: Any, timeout: float, what: str) -> None:
        wait_for_agent(self.proc, self.stderr, cond, timeout, what)

    def peek(self) -> list[dict[str, Any]]:
        """Summaries stored so far, read without writing to the running agent's spool."""
        return running_summaries(self.state)

    def summaries(self) -> list[dict[str, Any]]:
        """Every summary, through the spool's own reader (once the agent has stopped)."""
        path = self.state / "spool.sqlite"
        if not path.exists():
            return []
        spool = Spool(path)
        try:
            return [dict(claims(doc), _seq=seq)
                    for seq, doc in spool.documents(kind="summary")]
        finally:
            spool.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.errfile.close()

    def stop(self, signum: int) -> tuple[int | None, float]:
        """Send ``signum``; return the exit status (None if still running) and the delay."""
        sent = time.monotonic()
        self.proc.send_signal(signum)
        try:
            rc: int | None = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - sent
        self.kill()
        return rc, took


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Any]:
    """Starts agents with their own state directories; kills any a failed test left running."""
    started: list[Agent] = []

    def start(plant: Plant) -> Agent:
        started.append(Agent(plant, tmp_path / f"state{len(started)}"))
        started[-1].wait_ready()
        return started[-1]

    yield start
    for agent in started:
        agent.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_agent_summarises_modbus_on_mirror_port(modbus_server: Plant, start_agent: Any,
                                                signum: int) -> None:
    plant = modbus_server
    agent = start_agent(plant)
    run_client(plant)
    done_at = time.time()
    # libpcap hands its ring blocks over within the 0.5 s read timeout, so once a window
    # ending later than that is stored, every packet of the exchange went through.
    agent.wait_for(lambda: any(s["window"]["end"] >= done_at + 0.75 for s in agent.peek()),
                   8, "summarise the window after the traffic")
    rc, took = agent.stop(signum)
    err = agent.stderr()
    assert rc == 0, err
    assert took < 1.5, f"{signal.Signals(signum).name} took {took:.2f} s to stop the agent"
    assert "Traceback" not in err, err

    docs = agent.summaries()
    assert docs, err
    seqs = [d["seq"] for d in docs]
    assert seqs == [d["_seq"] for d in docs]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), seqs
    assert all(d["type"] == "summary" for d in docs)
    windows = [d["window"] for d in docs]
    for w in windows:
        assert w["start"] == int(w["start"]) and w["end"] - w["start"] == 1.0, w
    # A live source closes every window, empty or not: no holes, no overlaps.
    assert all(a["end"] == b["start"] for a, b in zip(windows, windows[1:])), windows
    assert all(w["complete"] for w in windows[:-1]) and not windows[-1]["complete"]

    caps = [d["health"]["capture"] for d in docs]
    for cap in caps:
        assert {"received", "dropped", "if_dropped"} <= cap.keys(), cap
        assert cap["dropped"] == 0 and cap["if_dropped"] == 0, cap
    received = [c["received"] for c in caps]
    assert received == sorted(received) and received[-1] > 0, received
    # Every packet libpcap delivered was counted in exactly one window.
    assert sum(d["health"]["packets"] for d in docs) == received[-1]
    assert docs[-1]["health"]["packets_total"] == received[-1]
    assert received[-1] >= CLIENT_MESSAGES + 6          # plus handshake, teardown, ACKs

    if "modbus" not in discover().names():
        return
    modbus = [d["protocols"]["modbus"] for d in docs if "modbus" in d["protocols"]]
    assert sum(p["messages"] for p in modbus) == CLIENT_MESSAGES, modbus
    assert all(p["flows"] == 1 for p in modbus), modbus
    flows = [f for d in docs for f in d["flows"] if f["proto"] == "modbus"]
    assert len({f["flow_id"] for f in flows}) == 1, flows
    assert all((f["transport"], f["src_ip"], f["dest_ip"], f["dest_port"])
               == ("tcp", plant.hmi_ip, plant.plc_ip, MODBUS_PORT) for f in flows), flows
    assert sum(f["messages"] for f in flows) == CLIENT_MESSAGES


def test_agent_stops_on_idle_link(plant: Plant, start_agent: Any) -> None:
    agent = start_agent(plant)
    time.sleep(1.2)                   # well into the select loop, with nothing to read
    rc, took = agent.stop(signal.SIGTERM)
    err = agent.stderr()
    assert rc == 0, err
    assert took < 1.0, f"SIGTERM took {took:.2f} s to stop the agent on an idle link"
    assert "Traceback" not in err, err


def test_agent_reports_silence_on_idle_link(plant: Plant, start_agent: Any) -> None:
    agent = start_agent(plant)
    agent.wait_for(lambda: any(s["window"]["complete"] for s in agent.peek()), 3,
                   "summarise an empty window")
    rc, _ = agent.stop(signal.SIGTERM)
    assert rc == 0
    docs = agent.summaries()
    assert all(d["health"]["packets"] == 0 and not d["flows"] for d in docs), docs


@pytest.mark.parametrize("bpf", ["tcp port 502", ""], ids=["bpf", "no-bpf"])
def test_live_source_filter_snaplen_stats(modbus_server: Plant, bpf: str) -> None:
    plant = modbus_server
    snaplen, tick = 80, 0.2
    probe = plant.popen(plant.mon, [PYTHON, "-c", LIVE_PROBE, CAPTURE_IF, bpf, str(snaplen),
                                    str(tick)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, cwd=ROOT)
    assert probe.stdout is not None and probe.stderr is not None
    try:
        assert probe.stdout.readline().strip() == "ready", probe.stderr.read()
        started = time.time()
        ping(plant, count=3, size=1000)
        run_client(plant, pause=0.0)
        time.sleep(3 * tick)              # let libpcap retire its last block
        out, err = probe.communicate("stop\n", timeout=10)
    finally:
        if probe.poll() is None:
            probe.kill()
    assert probe.returncode == 0, err
    rep = json.loads(out.strip().splitlines()[-1])

    frames = [(ts, lt, bytes.fromhex(h)) for ts, lt, h in rep["frames"]]
    assert frames, rep
    assert {lt for _, lt, _ in frames} == {1}                  # DLT_EN10MB
    assert all(len(f) <= snaplen for _, _, f in frames)
    stamps = [ts for ts, _, _ in frames]
    assert stamps == sorted(stamps) and started - 5 < stamps[0] < stamps[-1] < time.time() + 5

    def kind(frame: bytes) -> str:
        if frame[12:14] != b"\x08\x00":
            return "other"
        proto = frame[23]
        if proto == 1:
            return "icmp"
        if proto == 6:
            ihl = (frame[14] & 0x0F) * 4
            sport, dport = struct.unpack("!HH", frame[14 + ihl:18 + ihl])
            return "modbus" if MODBUS_PORT in (sport, dport) else "tcp"
        return "other"

    kinds = [kind(f) for _, _, f in frames]
    modbus = [f for (_, _, f), k in zip(frames, kinds) if k == "modbus"]
    icmp = [f for (_, _, f), k in zip(frames, kinds) if k == "icmp"]
    # Each request and response is at least one segment; the register reads are longer
    # than the snap length and must come cut to it.
    assert len(modbus) >= CLIENT_MESSAGES
    assert any(len(f) == snaplen for f in modbus)
    if bpf:
        assert set(kinds) == {"modbus"}, kinds
    else:
        assert len(icmp) == 6 and all(len(f) == snaplen for f in icmp), [len(f) for f in icmp]

    stats = rep["stats"]
    assert stats["received"] == len(frames), stats
    assert stats["dropped"] == 0 and stats["if_dropped"] == 0, stats
    assert stats["skipped_linktype"] == 0, stats
    ticks = rep["ticks"]
    assert ticks and ticks == sorted(ticks)
    assert rep["stop_latency"] < 2 * tick + 0.3, rep["stop_latency"]


def test_cli_unknown_interface(tmp_path: Path) -> None:
    proc = subprocess.run(AGENT + ["run", "--interface", "does-not-exist",
                                   "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert "capture error" in proc.stderr and "does-not-exist" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_live_source_names_why_it_cannot_open() -> None:
    from edge_agent.capture.source import CaptureError, LiveSource

    with pytest.raises(CaptureError) as err:
        LiveSource("does-not-exist")
    msg = str(err.value).lower()
    assert "does-not-exist" in msg
    assert "no such device" in msg or "permission" in msg, msg
