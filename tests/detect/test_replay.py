"""The replayed_request rule on Modbus/TCP frames (tests/plant.py) run through the pipeline."""
from __future__ import annotations

import pytest

from edge_agent.agent import Pipeline
from edge_agent.config import load
from edge_agent.detect.rules import ID_SPAN, MAX_PRINTS
from tests.plant import ModbusConversation, frame, ip, polling

HMI, PLC = 1, 2


def run(packets, window: float = 60.0, **detect):
    """Findings of every window, and the pipeline (its detector's tables)."""
    cfg = load().with_overrides({"summary.window_s": window,
                                 **{f"detect.{k}": v for k, v in detect.items()}})
    summaries: list = []
    pipe = Pipeline(cfg, sink=summaries.append)
    for ts, linktype, data in packets:
        pipe.feed(ts, linktype, data)
    pipe.finish()
    return [f for s in summaries for f in s["findings"]], pipe


def replays(findings) -> list:
    return [f for f in findings if f["rule"] == "replayed_request"]


def requests(packets, func_code: int) -> list[bytes]:
    """The Modbus/TCP ADUs of the HMI's requests with this function code, as sniffed."""
    return [f[54:] for _, _, f in packets
            if f[26:30] == ip(HMI) and f[30:34] == ip(PLC) and len(f) > 61 and f[61] == func_code]


def resend(adus: list[bytes], start: float, cport: int = 45000) -> list:
    """The ADUs sent again byte for byte on a new connection; the PLC echoes each."""
    out, seq = [], 1
    for i, adu in enumerate(adus):
        out.append((start + i * 0.3, 1, frame(ip(HMI), cport, ip(PLC), 502, adu, seq)))
        out.append((start + i * 0.3 + 0.01, 1, frame(ip(PLC), 502, ip(HMI), cport, adu, seq)))
        seq += len(adu)
    return out


def setpoints(conv: ModbusConversation, start: float, seconds: float) -> list:
    """Polling with a setpoint write (a new value each time) every fifth request."""
    out = []
    for i in range(int(seconds)):
        out += (conv.write(start + i, addr=10, value=400 + i) if i % 5 == 4
                else conv.read(start + i, addr=0, count=10))
    return out


def test_writes_resent_on_a_new_connection_are_a_replay() -> None:
    normal = setpoints(ModbusConversation(HMI, PLC), 0.0, 300)
    writes = requests(normal, 6)
    assert len(writes) == 60
    # Replayed two windows later: what is remembered outlives the window it was seen in.
    findings, _ = run(normal + resend(writes[-10:], 420.0))
    (f,) = replays(findings)
    assert (f["severity"], f["attack_technique"]) == ("high", "T0855")
    assert (f["src_ip"], f["dest_ip"], f["proto"]) == ("10.0.0.1", "10.0.0.2", "modbus")
    assert f["count"] == 10 and f["first_ts"] == pytest.approx(420.3)   # at the second copy
    assert f["messages"][0]["src_port"] == 45000
    assert f["messages"][0]["modbus"]["transaction_id"] == writes[-9][0] << 8 | writes[-9][1]
    assert "transaction_id" in f["detail"] and f["reason"]


def test_one_resent_write_is_below_the_threshold_which_retunes() -> None:
    normal = setpoints(ModbusConversation(HMI, PLC), 0.0, 120)
    again = resend(requests(normal, 6)[-1:], 130.0)
    assert replays(run(normal + again)[0]) == []
    assert len(replays(run(normal + again, params={"replayed_request.threshold": 1})[0])) == 1
    assert replays(run(normal + resend(requests(normal, 6)[-5:], 130.0),
                       disabled=["replayed_request"])[0]) == []


def test_polling_with_growing_ids_is_no_replay() -> None:
    # The same write (register 10 = 1) over and over, on one connection and then on new
    # connections whose client keeps counting its transactions.
    conv = ModbusConversation(HMI, PLC)
    packets = polling(conv, 0.0, 200, write_every=4)
    for n in range(3):
        nxt = ModbusConversation(HMI, PLC, cport=41000 + n)
        nxt.tid = conv.tid
        packets += polling(nxt, 200.0 + 100 * n, 100, write_every=4)
        conv = nxt
    findings, _ = run(packets)
    assert len(requests(packets, 6)) == 125 and findings == []


def test_a_client_numbering_each_connection_from_one_is_no_replay() -> None:
    # Connect, write the same two setpoints with transaction ids 1 and 2, disconnect: the same
    # bytes every minute, but the new connection began where the first one did.
    packets = []
    for n in range(10):
        conv = ModbusConversation(HMI, PLC, cport=42000 + n)
        packets += conv.write(60.0 * n, addr=10, value=1) + conv.write(60.0 * n + 1, 11, 2)
    assert len(set(requests(packets, 6))) == 2
    findings, _ = run(packets)
    assert findings == []


def test_retransmissions_and_retries_on_one_connection_are_no_replay() -> None:
    conv = ModbusConversation(HMI, PLC)
    packets = setpoints(conv, 0.0, 60)
    writes = [p for p in packets if p[2][26:30] == ip(HMI) and p[2][61] == 6]
    # TCP retransmissions: the same segments (same sequence numbers) again.
    retrans = [(ts + 0.2, 1, f) for ts, _, f in writes]
    # A client's own retries: the same ADUs again further on in the stream.
    seq = conv.cseq
    retries = []
    for i, adu in enumerate(requests(packets, 6)):
        retries.append((70.0 + i, 1, frame(ip(HMI), conv.cport, ip(PLC), 502, adu, seq)))
        seq += len(adu)
    all_packets = sorted(packets + retrans, key=lambda p: p[0]) + retries
    findings, pipe = run(all_packets, params={"replayed_request.threshold": 1})
    assert replays(findings) == []
    assert len(pipe.detector.prints) == 12          # the retries were seen, and not counted
    # The very same retries on a new connection are a replay.
    other = [(ts, lt, frame(ip(HMI), 45000, ip(PLC), 502, f[54:], 1 + i * 12))
             for i, (ts, lt, f) in enumerate(retries)]
    assert len(replays(run(packets + other)[0])) == 1


def test_reads_resent_on_a_new_connection_are_no_replay() -> None:
    normal = setpoints(ModbusConversation(HMI, PLC), 0.0, 120)
    reads = requests(normal, 3)
    findings, _ = run(normal + resend(reads[-20:], 130.0), params={"replayed_request.threshold": 1})
    assert replays(findings) == []


def test_ids_that_came_round_are_no_replay() -> None:
    # A client that keeps counting across connections comes back to the same transaction id
    # after 65536 requests; past ID_SPAN requests on the channel, a match no longer counts.
    def history(reads: int) -> list:
        conv = ModbusConversation(HMI, PLC)
        conv.tid = 98
        out = conv.read(0.0) + conv.write(0.2, 10, 1) + conv.write(0.5, 11, 2)   # 100, 101
        out += [p for i in range(reads) for p in conv.read(1.0 + i * 0.005)]
        later = ModbusConversation(HMI, PLC, cport=41000)
        later.tid = 99                                                # the counter came round
        return out + later.write(200.0, 10, 1) + later.write(200.5, 11, 2)

    assert len(replays(run(history(100))[0])) == 1
    assert replays(run(history(ID_SPAN))[0]) == []


def test_replay_tables_stay_bounded_and_forget_the_oldest() -> None:
    conv = ModbusConversation(HMI, PLC)
    packets = []
    for i in range(MAX_PRINTS + 500):
        packets += conv.write(i * 0.01, addr=10, value=i)
    writes = requests(packets, 6)
    packets += resend(writes[:5], 100.0, 45000)          # forgotten: pushed out by newer ones
    packets += resend(writes[-5:], 110.0, 45001)         # remembered
    for n in range(4196):                                # many short connections
        packets += ModbusConversation(3 + n % 200, PLC, cport=20000 + n).read(120.0 + n * 0.001)
    # The HMI's connection, forgotten among them, retries two of its writes: still no replay.
    seq = conv.cseq
    for i, adu in enumerate(writes[-10:-8]):
        packets.append((130.0 + i, 1, frame(ip(HMI), conv.cport, ip(PLC), 502, adu, seq)))
        seq += len(adu)
    findings, pipe = run(packets)
    det = pipe.detector
    assert len(det.prints) == MAX_PRINTS
    assert len(det.connections) == det.max_known == 4096      # limits.max_assets
    assert len(det.channel_requests) <= det.max_known
    (f,) = replays(findings)
    assert f["messages"][0]["src_port"] == 45001
