"""The flow table and TCP reassembly, driven with a toy protocol so only the flows are tested.

The toy protocol: 0xAA, a length byte, then that many body bytes. Port 7000 (TCP and UDP).
"""
from __future__ import annotations

import struct

from edge_agent.decode import Decoder, Limits, Message, Registry, Session
from edge_agent.decode.link import L4
from edge_agent.flows.table import FlowLimits, FlowTable

CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


class ToySession(Session):
    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        if pdu[0] != 0xAA:
            raise ValueError("not toy")
        return [Message("toy", {"body": pdu[2:].decode()}, from_client, (), "toy_msg")]


class ToyDecoder(Decoder):
    def probe(self, data: bytes) -> bool:
        return len(data) >= 2 and data[0] == 0xAA and data[1] < 64

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        out, pos = [], 0
        while len(data) - pos >= 2:
            if data[pos] != 0xAA:
                return out, (pos if out else -1)
            end = pos + 2 + data[pos + 1]
            if end > len(data):
                break
            out.append(bytes(data[pos:end]))
            pos = end
        return out, pos

    def session(self, limits: Limits) -> Session:
        return ToySession()


TOY = ToyDecoder("toy", tcp_ports=frozenset({7000}), udp_ports=frozenset({7000}))


def toy(body: str) -> bytes:
    return bytes([0xAA, len(body)]) + body.encode()


def seg(payload: bytes, seq: int, from_client: bool = True, flags: int = ACK | PSH,
        transport: str = "tcp", cport: int = 40000, sport: int = 7000) -> L4:
    if from_client:
        return L4(transport, CLIENT, SERVER, cport, sport, payload, flags, seq, 0)
    return L4(transport, SERVER, CLIENT, sport, cport, payload, flags, seq, 0)


def table(**kw) -> FlowTable:
    return FlowTable(Registry([TOY]), FlowLimits(**kw))


def bodies(events) -> list[str]:
    return [e.message.fields["body"] for e in events if e.message.kind]


def anomalies(events) -> list[str]:
    return [a for e in events for a in e.message.anomalies]


def test_handshake_orients_flow_and_decodes_both_directions() -> None:
    t = table()
    # The client uses port 7000 as its *source* port: only the SYN can tell who is client.
    t.process(L4("tcp", CLIENT, SERVER, 7000, 7000, b"", SYN, 99, 0), 1.0)
    t.process(L4("tcp", SERVER, CLIENT, 7000, 7000, b"", SYN | ACK, 499, 100), 1.0)
    ev = t.process(L4("tcp", CLIENT, SERVER, 7000, 7000, toy("req"), ACK | PSH, 100, 500), 1.1)
    ev += t.process(L4("tcp", SERVER, CLIENT, 7000, 7000, toy("rsp"), ACK | PSH, 500, 105), 1.2)
    assert bodies(ev) == ["req", "rsp"]
    assert [e.from_client for e in ev] == [True, False]
    flow = ev[0].flow
    assert flow.client_ip == "10.0.0.1" and flow.proto == "toy" and flow.messages == 2


def test_midstream_pickup_orients_by_well_known_port() -> None:
    ev = table().process(seg(toy("x"), 5000, from_client=False), 1.0)
    assert ev[0].flow.client_ip == "10.0.0.1" and ev[0].from_client is False


def test_pdu_split_across_segments_and_two_in_one() -> None:
    t = table()
    data = toy("first") + toy("second")
    ev = t.process(seg(data[:4], 1), 1.0)
    assert bodies(ev) == []
    ev = t.process(seg(data[4:], 5), 1.1)
    assert bodies(ev) == ["first", "second"]


def test_retransmission_and_overlap_deliver_once() -> None:
    t = table()
    a, b = toy("one"), toy("two")
    ev = t.process(seg(a, 1), 1.0)
    ev += t.process(seg(a, 1), 1.1)                       # exact retransmission
    ev += t.process(seg(a[2:] + b, 3), 1.2)               # overlaps the end of the first
    assert bodies(ev) == ["one", "two"]
    assert ev[0].flow.streams[0].retransmits == 1


def test_out_of_order_segments_are_put_back_in_order() -> None:
    t = table()
    a, b, c = toy("a"), toy("b"), toy("c")
    ev = t.process(seg(a, 1), 1.0)
    ev += t.process(seg(c, 1 + len(a) + len(b)), 1.1)     # arrives early: held
    assert bodies(ev) == ["a"]
    ev += t.process(seg(b, 1 + len(a)), 1.2)
    assert bodies(ev) == ["a", "b", "c"]


def test_gap_is_named_and_stream_resynchronises_with_probe() -> None:
    t = table(max_ooo_segments=2)
    a = toy("a")
    ev = t.process(seg(a, 1), 1.0)
    lost = toy("lost-pdu")
    pos = 1 + len(a) + len(lost)
    # The segment after the hole starts in the middle of a PDU: "\x00junk" then real PDUs.
    later = [b"junk" + toy("b"), toy("c"), toy("d")]
    for i, data in enumerate(later):
        ev += t.process(seg(data, pos), 2.0 + i)
        pos += len(data)
    assert "tcp.gap" in anomalies(ev) and "tcp.resync" in anomalies(ev)
    assert bodies(ev) == ["a", "b", "c", "d"]


def test_lost_bytes_at_flow_end_are_still_decoded() -> None:
    t = table()
    ev = t.process(seg(toy("a"), 1), 1.0)
    ev += t.process(seg(toy("z"), 500), 1.1)              # hole never filled
    ev += t.close_all(2.0)
    assert bodies(ev) == ["a", "z"] and "tcp.gap" in anomalies(ev)


def test_probe_finds_protocol_on_unknown_port() -> None:
    t = table()
    ev = t.process(seg(toy("hi"), 1, sport=9999), 1.0)
    assert bodies(ev) == ["hi"] and ev[0].flow.proto == "toy"
    other = t.process(seg(b"GET / HTTP/1.1\r\n", 1, cport=40001, sport=80), 1.0)
    assert other == [] and t.flows[next(reversed(t.flows))].decoder is None


def test_undecodable_stream_on_known_port_is_given_up() -> None:
    t = table()
    ev = []
    for i in range(10):
        ev += t.process(seg(b"\x00" * 1400, 1 + i * 1400), 1.0 + i)
    assert "tcp.undecodable_stream" in anomalies(ev)
    flow = ev[-1].flow
    assert flow.dead and flow.streams is None
    assert t.process(seg(toy("x"), 1 + 10 * 1400), 20.0) == []


def test_decoder_errors_become_malformed_anomaly() -> None:
    t = table()
    ev = t.process(seg(b"\xAA\x00", 1, transport="udp"), 1.0)       # toy raises nothing here
    ev += t.process(seg(b"\xBB\x01x", 1, transport="udp"), 1.1)     # ValueError inside feed
    assert anomalies(ev) == ["toy.malformed"]


def test_flow_count_is_bounded_lru_evicted() -> None:
    t = table(max_flows=16)
    for port in range(100):
        t.process(seg(toy("x"), 1, cport=10000 + port), 1.0 + port * 0.001)
    assert len(t.flows) == 16 and t.evicted_full == 84


def test_idle_flows_are_swept_by_packet_time() -> None:
    t = table(udp_idle_timeout=10.0, tcp_idle_timeout=30.0)
    t.process(seg(toy("u"), 0, transport="udp"), 0.0)
    t.process(seg(toy("t"), 1), 0.0)
    t.process(seg(toy("t"), 1, cport=1), 15.0)            # 15 s later: the UDP flow is idle
    assert {f.transport for f in t.flows.values()} == {"tcp"} and t.evicted_idle == 1
    t.process(seg(toy("t"), 1, cport=2), 50.0)
    assert len(t.flows) == 1


def test_stream_buffer_is_bounded() -> None:
    t = table(max_stream_buffer=1024, max_ooo_segments=4096)
    t.process(seg(b"\xAA\x3f" + b"x" * 10, 1), 1.0)       # a PDU waiting for 63 bytes
    flow = next(iter(t.flows.values()))
    held = []
    for i in range(1, 200):                                  # out-of-order flood past a hole
        t.process(seg(bytes([0xAA, 50]) + b"y" * 50, 5000 + i * 52), 1.0)
        if flow.streams is not None:
            s = flow.streams[0]
            held.append(len(s.buf) + s.ooo_bytes)
    assert held and max(held) <= 1024 + 52


def test_hole_acknowledged_by_peer_is_given_up_at_once() -> None:
    t = table()
    ev = t.process(seg(toy("a"), 1), 1.0)
    lost = toy("lost")
    after = 1 + len(toy("a")) + len(lost)
    ev += t.process(seg(toy("b"), after), 1.1)           # held behind the hole
    assert bodies(ev) == ["a"]
    # The server acknowledges everything: it got the lost segment, the sensor did not.
    ev += t.process(L4("tcp", SERVER, CLIENT, 7000, 40000, b"", ACK, 900, after + 3), 1.2)
    assert bodies(ev) == ["a", "b"] and "tcp.gap" in anomalies(ev)


def test_hole_waits_for_a_reordered_segment_only_briefly() -> None:
    t = table()
    a, lost, b, c = toy("a"), toy("lost"), toy("b"), toy("c")
    ev = t.process(seg(a, 1), 1.0)
    ev += t.process(seg(b, 1 + len(a) + len(lost)), 1.1)
    ev += t.process(seg(lost, 1 + len(a)), 1.2)          # late but within the wait: no gap
    assert bodies(ev) == ["a", "lost", "b"] and not anomalies(ev)
    pos = 1 + len(a) + len(lost) + len(b)
    ev += t.process(seg(c, pos + 10), 2.0)               # 10 bytes never come
    ev += t.process(seg(toy("d"), pos + 10 + len(c)), 5.0)   # past the wait: gap, go on
    assert bodies(ev)[-2:] == ["c", "d"] and "tcp.gap" in anomalies(ev)
