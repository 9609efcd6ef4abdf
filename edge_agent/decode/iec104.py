"""IEC 60870-5-104: APCI framing, I/S/U formats, send/receive sequence tracking, ASDU decoding.

Spec: IEC 60870-5-104 (2006) clause 5 (APCI: start 0x68, APDU length 4-253, the four control
octets of the I, S and U formats, sequence numbers modulo 32768) and clause 9 (ASDUs with a
two-octet cause of transmission, two-octet common address and three-octet information object
address); IEC 60870-5-101 (2003) 7.2 (data unit identifier: type identification, variable
structure qualifier, cause of transmission with its P/N and test bits, originator address) and
7.3 (ASDUs; elements in :mod:`edge_agent.decode.iec104_types`). TCP port 2404; other ports by
probe. Every multi-byte field is little-endian.

Records, one per APDU: ``apci_type`` ("I", "S", "U"); ``tx_seq, rx_seq`` (I), ``rx_seq`` (S),
``u_func_code, u_func`` (U: ``startdt_act`` ...). I-format APDUs add ``type_id, type, sq,
num_objects, cot_code, cot, negative, test, originator, common_address`` and ``objects`` (the
first 64: ``ioa``, ``value``, ``quality``, ``time``, ``select``, ``qualifier`` ...). ``kind`` is
the type name for I, ``u_func`` for U and ``s_frame`` for S. Commands, parameters and the
controlling station's file calls with activation, deactivation or request are requests;
monitor-direction ASDUs and confirmations are not; U act is a request, con is not.

Anomalies (prefixed ``iec104.``): ``invalid_start``, ``invalid_length`` (APDU length outside
4-253, an S or U APDU longer than 4 octets, an I APDU too short for its data unit, information
objects that do not fill the ASDU exactly, no objects), ``truncated`` (fewer octets than the
length announces), ``invalid_control`` (undefined U function, reserved control bits),
``sequence_gap`` and ``sequence_duplicate`` (an I APDU whose N(S) is not the one after the
last from that side), ``invalid_ack`` (an N(R) acknowledging I APDUs the peer has not sent),
``unknown_type``, ``unknown_cot``.
"""
from __future__ import annotations

from typing import Any

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session
from edge_agent.decode.iec104_types import (
    IEC104_CONTROL_TYPES,
    IEC104_COT_PRIVATE,
    IEC104_COTS,
    IEC104_ELEMENTS,
    IEC104_REQUEST_COTS,
    IEC104_SEGMENT,
    IEC104_TYPES,
)


class APCI(dpkt.Packet):
    """Application protocol control information (104 clause 5.1); ``data`` is the ASDU."""

    __byte_order__ = "<"
    __hdr__ = (
        ("start", "B", 0x68),
        ("length", "B", 4),        # octets after this one: the control field and the ASDU
        ("ctrl1", "B", 0x01),
        ("ctrl2", "B", 0),
        ("ctrl3", "B", 0),
        ("ctrl4", "B", 0),
    )


class ASDUHeader(dpkt.Packet):
    """Data unit identifier (101 7.2 with the 104 field sizes of clause 9)."""

    __byte_order__ = "<"
    __hdr__ = (
        ("type_id", "B", 0),
        ("vsq", "B", 1),           # SQ << 7 | number of information objects
        ("cot", "B", 6),           # T << 7 | P/N << 6 | cause
        ("originator", "B", 0),
        ("common_address", "H", 1),
    )


IEC104_PORT = 2404               # 104 clause 10: IANA registered port
IEC104_START = 0x68              # 104 5.1
IEC104_MIN_LENGTH = 4            # 104 5.1: the control field alone
IEC104_MAX_LENGTH = 253          # 104 5.1: 255 octets APDU at most
IEC104_APCI = 6
IEC104_DUI = 6                   # data unit identifier octets (clause 9)
IEC104_IOA = 3                   # information object address octets (clause 9)
IEC104_SEQ_MOD = 32768           # 104 5.1: sequence numbers are 15 bits
IEC104_MAX_OBJECTS = 64          # information objects kept per record
IEC104_MAX_DATA = 64             # octets kept (as hex) of an undecoded ASDU body
# 104 5.3: U format functions (exactly one of the six bits set, plus the two format bits)
IEC104_U_FUNCS: dict[int, str] = {
    0x07: "startdt_act", 0x0B: "startdt_con", 0x13: "stopdt_act", 0x23: "stopdt_con",
    0x43: "testfr_act", 0x83: "testfr_con",
}

A_START = "iec104.invalid_start"
A_LENGTH = "iec104.invalid_length"
A_TRUNCATED = "iec104.truncated"
A_CONTROL = "iec104.invalid_control"
A_SEQ_GAP = "iec104.sequence_gap"
A_SEQ_DUP = "iec104.sequence_duplicate"
A_ACK = "iec104.invalid_ack"
A_UNKNOWN_TYPE = "iec104.unknown_type"
A_UNKNOWN_COT = "iec104.unknown_cot"

Fields = dict[str, Any]


def _objects(b: bytes, off: int, end: int, tid: int, sq: int, num: int, f: Fields,
             an: list[str]) -> None:
    """Information objects (101 7.3 with three-octet IOAs): SQ=0 repeats IOA + element, SQ=1
    gives one IOA for ``num`` consecutive elements."""
    spec = IEC104_ELEMENTS.get(tid)
    if spec is None:
        if end > off:
            f["data"] = b[off:min(end, off + IEC104_MAX_DATA)].hex()
        return
    size, parse = spec
    if not num:
        an.append(A_LENGTH)
    segmented = tid == IEC104_SEGMENT
    if segmented:
        need = num * (IEC104_IOA + size) + _segment_lengths(b, off, end, num, size)
    else:
        need = IEC104_IOA + num * size if sq else num * (IEC104_IOA + size)
    if need != end - off:
        an.append(A_LENGTH)
    objs: list[dict[str, Any]] = []
    obj: dict[str, Any]
    p = off
    if sq:
        if p + IEC104_IOA > end:
            f["objects"] = objs
            return
        base = b[p] | b[p + 1] << 8 | b[p + 2] << 16
        p += IEC104_IOA
        for i in range(min(num, IEC104_MAX_OBJECTS)):
            if p + size > end:
                break
            obj = {"ioa": base + i}
            parse(b, p, obj)
            objs.append(obj)
            p += size
    else:
        step = IEC104_IOA + size
        for _ in range(min(num, IEC104_MAX_OBJECTS)):
            if p + step > end:
                break
            obj = {"ioa": b[p] | b[p + 1] << 8 | b[p + 2] << 16}
            parse(b, p + IEC104_IOA, obj)
            seg = 0
            if segmented:
                seg = obj["segment_length"]
                obj["segment"] = b[p + step:p + step + min(seg, IEC104_MAX_DATA)].hex()
            objs.append(obj)
            p += step + seg
    f["objects"] = objs


def _segment_lengths(b: bytes, off: int, end: int, num: int, size: int) -> int:
    """F_SG_NA_1 (101 7.3.6.9): the octets of segment data after each fixed element."""
    total, p = 0, off
    for _ in range(num):
        if p + IEC104_IOA + size > end:
            break
        seg = b[p + IEC104_IOA + size - 1]
        total += seg
        p += IEC104_IOA + size + seg
    return total


class IEC104Session(Session):
    """Per-connection state: the next N(S) expected from each side."""

    def __init__(self, limits: Limits) -> None:
        # index 0: the client (controlling station, usually), 1: the server
        self.next_tx: list[int | None] = [None, None]

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        b = pdu
        n = len(b)
        an: list[str] = []
        f: Fields = {}
        if not n or b[0] != IEC104_START:
            an.append(A_START)
        if n < IEC104_APCI:
            an.append(A_TRUNCATED)
            return [Message("iec104", f, None, tuple(an))]
        length = b[1]
        end = length + 2
        if not IEC104_MIN_LENGTH <= length <= IEC104_MAX_LENGTH:
            an.append(A_LENGTH)
        if end > n:
            an.append(A_TRUNCATED)
            end = n
        elif end < n:
            an.append(A_LENGTH)
            if end < IEC104_APCI:
                end = n
        c1, c2, c3, c4 = b[2], b[3], b[4], b[5]
        d = 0 if from_client else 1
        if not c1 & 1:
            return [self._i_format(b, end, c1, c2, c3, c4, d, f, an)]
        if c1 & 3 == 1:
            f["apci_type"] = "S"
            rx = f["rx_seq"] = (c3 | c4 << 8) >> 1
            if c1 != 1 or c2 or c3 & 1:
                an.append(A_CONTROL)
            if end != IEC104_APCI:
                an.append(A_LENGTH)
            self._check_ack(rx, d, an)
            return [self._done(f, an, None, "s_frame")]
        f["apci_type"] = "U"
        f["u_func_code"] = c1
        name = IEC104_U_FUNCS.get(c1)
        if name is None or c2 or c3 or c4:
            an.append(A_CONTROL)
        f["u_func"] = name or "unknown"
        if end != IEC104_APCI:
            an.append(A_LENGTH)
        return [self._done(f, an, None if name is None else name.endswith("_act"),
                           name or "unknown")]

    def _i_format(self, b: bytes, end: int, c1: int, c2: int, c3: int, c4: int, d: int,
                  f: Fields, an: list[str]) -> Message:
        f["apci_type"] = "I"
        tx = f["tx_seq"] = (c1 | c2 << 8) >> 1
        rx = f["rx_seq"] = (c3 | c4 << 8) >> 1
        if c3 & 1:
            an.append(A_CONTROL)
        expected = self.next_tx[d]
        if expected is not None and tx != expected:
            an.append(A_SEQ_DUP if (expected - tx) % IEC104_SEQ_MOD == 1 else A_SEQ_GAP)
            f["expected_tx_seq"] = expected
        self.next_tx[d] = (tx + 1) % IEC104_SEQ_MOD
        self._check_ack(rx, d, an)
        off = IEC104_APCI
        if end - off < IEC104_DUI:
            an.append(A_TRUNCATED if len(b) < b[1] + 2 else A_LENGTH)
            return self._done(f, an, None, "unknown")
        tid, vsq, cot, oa, ca_lo, ca_hi = b[off:off + IEC104_DUI]
        name = IEC104_TYPES.get(tid)
        sq = vsq >> 7
        num = vsq & 0x7F
        cause = cot & 0x3F
        cot_name = IEC104_COTS.get(cause)
        if cot_name is None:
            if cause in IEC104_COT_PRIVATE:
                cot_name = "private"
            else:
                an.append(A_UNKNOWN_COT)
        f.update(type_id=tid, type=name or "unknown", sq=bool(sq), num_objects=num,
                 cot_code=cause, cot=cot_name or "unknown", negative=bool(cot & 0x40),
                 test=bool(cot & 0x80), originator=oa, common_address=ca_lo | ca_hi << 8)
        off += IEC104_DUI
        if name is None:
            an.append(A_UNKNOWN_TYPE)
            if end > off:
                f["data"] = b[off:min(end, off + IEC104_MAX_DATA)].hex()
        else:
            _objects(b, off, end, tid, sq, num, f, an)
        is_req = tid in IEC104_CONTROL_TYPES and cause in IEC104_REQUEST_COTS
        return self._done(f, an, is_req, name or "unknown")

    def _check_ack(self, rx: int, d: int, an: list[str]) -> None:
        """N(R) says the sender received everything below it: not more than the peer sent."""
        sent = self.next_tx[1 - d]
        if sent is not None and 0 < (rx - sent) % IEC104_SEQ_MOD < IEC104_SEQ_MOD // 2:
            an.append(A_ACK)

    @staticmethod
    def _done(f: Fields, an: list[str], is_req: bool | None, kind: str) -> Message:
        anomalies = () if not an else tuple(dict.fromkeys(an)) if len(an) > 1 else (an[0],)
        return Message("iec104", f, is_req, anomalies, kind)


class IEC104Decoder(Decoder):
    """IEC 60870-5-104 on TCP port 2404: a stream of APDUs, each 0x68 and a length octet."""

    def probe(self, data: bytes) -> bool:
        n = len(data)
        if n < IEC104_APCI or data[0] != IEC104_START:
            return False
        length = data[1]
        if not IEC104_MIN_LENGTH <= length <= IEC104_MAX_LENGTH:
            return False
        c1 = data[2]
        if not c1 & 1:
            if length < IEC104_MIN_LENGTH + IEC104_DUI or data[4] & 1:
                return False
            if n >= 10 and (data[6] not in IEC104_TYPES or not data[7] & 0x7F
                            or data[8] & 0x3F not in IEC104_COTS):
                return False
        elif c1 & 3 == 1:
            if length != IEC104_MIN_LENGTH or c1 != 1 or data[3] or data[4] & 1:
                return False
        elif length != IEC104_MIN_LENGTH or c1 not in IEC104_U_FUNCS or any(data[3:6]):
            return False
        nxt = length + 2
        return n <= nxt or data[nxt] == IEC104_START

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        off = 0
        n = len(data)
        while n - off >= 2:
            if data[off] != IEC104_START or data[off + 1] < IEC104_MIN_LENGTH:
                # Hand over what framed cleanly; the next call reports the garbage.
                return (out, off) if out else ([], -1)
            stop = off + 2 + data[off + 1]
            if stop > n:
                break
            out.append(bytes(data[off:stop]))
            off = stop
        if not out and n and data[0] != IEC104_START:
            return [], -1
        return out, off

    def session(self, limits: Limits) -> IEC104Session:
        return IEC104Session(limits)


DECODER = IEC104Decoder(name="iec104", tcp_ports=frozenset({IEC104_PORT}))
