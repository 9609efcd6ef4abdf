"""Synthetic Modbus/TCP plant traffic as Ethernet frames, for driving the pipeline in tests."""
from __future__ import annotations

import struct

ETH = bytes.fromhex("66778899aabb" "001122334455" "0800")


def ip(last: int) -> bytes:
    return bytes([10, 0, 0, last])


def frame(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes, seq: int,
          flags: int = 0x18) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 8192, 0, 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, src, dst)
    return ETH + hdr + tcp


class ModbusConversation:
    """One client talking to one server: requests and replies with growing sequence numbers."""

    def __init__(self, client: int, server: int, cport: int = 40000, unit: int = 1) -> None:
        self.c, self.s, self.cport, self.unit = ip(client), ip(server), cport, unit
        self.cseq = self.sseq = 1
        self.tid = 0

    def _pair(self, req: bytes, rsp: bytes, ts: float) -> list[tuple[float, int, bytes]]:
        self.tid += 1
        mbap = lambda pdu: struct.pack("!HHHB", self.tid, 0, len(pdu) + 1, self.unit) + pdu
        a = frame(self.c, self.cport, self.s, 502, mbap(req), self.cseq)
        b = frame(self.s, 502, self.c, self.cport, mbap(rsp), self.sseq)
        self.cseq += len(mbap(req))
        self.sseq += len(mbap(rsp))
        return [(ts, 1, a), (ts + 0.01, 1, b)]

    def read(self, ts: float, addr: int = 0, count: int = 4) -> list:
        return self._pair(struct.pack("!BHH", 3, addr, count),
                          bytes([3, 2 * count]) + bytes(2 * count), ts)

    def write(self, ts: float, addr: int = 10, value: int = 1) -> list:
        pdu = struct.pack("!BHH", 6, addr, value)
        return self._pair(pdu, pdu, ts)

    def exception(self, ts: float, addr: int = 9000) -> list:
        return self._pair(struct.pack("!BHH", 3, addr, 1), bytes([0x83, 2]), ts)

    def diagnostics(self, ts: float, sub: int) -> list:
        pdu = struct.pack("!BHH", 8, sub, 0)
        return self._pair(pdu, pdu, ts)


def polling(conv: ModbusConversation, start: float, seconds: float, period: float = 1.0,
            write_every: int = 0) -> list:
    out = []
    n = 0
    t = start
    while t < start + seconds:
        out += conv.write(t) if write_every and n % write_every == write_every - 1 else conv.read(t)
        n += 1
        t += period
    return out
