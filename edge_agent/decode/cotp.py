"""ISO-on-TCP (TCP port 102): TPKT + COTP, dispatching to S7comm, S7comm-plus or MMS.

Specs: RFC 1006 "ISO Transport Service on top of the TCP" (section 6: the TPKT packet,
version 3, 16-bit length counting the 4-octet header) and ITU-T X.224 / ISO 8073 "Connection-
mode transport protocol" (13.2 TPDU structure and length indicator; 13.3 CR, 13.4 CC, 13.5 DR,
13.6 DC, 13.7 DT, 13.8 ED, 13.9 AK, 13.10 EA, 13.11 RJ, 13.12 ER; 13.3.4 variable-part
parameters). RFC 1006 runs class 0, whose DT header is the length indicator, 0xF0 and one
octet of TPDU number with the end-of-TSDU bit. Everything is big-endian.

``split`` frames TPKTs; the session reassembles DT TPDUs per direction until EOT (bounded by
``limits.max_pdu``) and hands the TSDU to the protocol its first octet names: 0x32 S7comm
(``s7comm.py``), 0x72 S7comm-plus (``s7comm_plus.py``), anything else (ISO session/presentation
carrying MMS, IEC 61850) to ``edge_agent.decode.mms.decode(user_data, from_client, state)``
when that module exists (``state``: one per connection, made from ``decode.state``), else a
``cotp`` record. Connection management TPDUs are ``cotp`` records with
``tpdu_code, tpdu``, references, class and the TSAPs (the called TSAP of an S7 connection
names rack and slot).

Anomalies (prefix ``cotp.``): ``invalid_tpkt`` (version not 3), ``invalid_length`` (TPKT
length or length indicator disagreeing with the bytes), ``unknown_tpdu``,
``reassembly_overflow`` (a TSDU past ``limits.max_pdu``).
"""
from __future__ import annotations

import importlib
import struct
from typing import Any, Callable

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session
from edge_agent.decode.s7comm import S7COMM_PROTOCOL_ID, S7COMM_ROSCTR, S7Session
from edge_agent.decode.s7comm_plus import (S7COMM_PLUS_PROTOCOL_ID, S7COMM_PLUS_VERSIONS,
                                           S7PlusSession)


class TPKT(dpkt.Packet):
    """RFC 1006 section 6 packet header; ``data`` is the TPDU."""

    __hdr__ = (
        ("version", "B", 3),
        ("reserved", "B", 0),
        ("length", "H", 7),      # the whole packet, header included
    )


class COTPConnect(dpkt.Packet):
    """X.224 13.3-13.6 fixed part of CR/CC (and DR/DC, where the last octet differs)."""

    __hdr__ = (
        ("li", "B", 6),           # length indicator: header octets after this one
        ("code", "B", 0xE0),      # TPDU code (high nibble) and credit
        ("dst_ref", "H", 0),
        ("src_ref", "H", 0),
        ("class_option", "B", 0),  # class (high nibble) and options; DR: reason
    )


class COTPData(dpkt.Packet):
    """X.224 13.7 class 0 DT header."""

    __hdr__ = (
        ("li", "B", 2),
        ("code", "B", 0xF0),
        ("nr_eot", "B", 0x80),    # EOT bit and 7-bit TPDU number
    )


COTP_PORT = 102                   # RFC 1006 section 7
TPKT_VERSION = 3                  # RFC 1006 section 6
TPKT_HEADER_LEN = 4
TPKT_MIN_LENGTH = 7               # RFC 1006 section 6: header + the shortest TPDU
COTP_EOT = 0x80                   # X.224 13.7.3 e): end of TSDU

# X.224 13.1 TPDU codes (high nibble); names as Zeek ICSNPP's cotp.log in snake case
COTP_TPDUS: dict[int, str] = {
    0x1: "expedited_data", 0x2: "expedited_data_ack", 0x5: "reject", 0x6: "data_ack",
    0x7: "tpdu_error", 0x8: "disconnect_request", 0xC: "disconnect_confirm",
    0xD: "connection_confirm", 0xE: "connection_request", 0xF: "data",
}
TPDU_ED, TPDU_EA, TPDU_RJ, TPDU_AK, TPDU_ER = 0x1, 0x2, 0x5, 0x6, 0x7
TPDU_DR, TPDU_DC, TPDU_CC, TPDU_CR, TPDU_DT = 0x8, 0xC, 0xD, 0xE, 0xF
# Kinds for flow histories. CR/CC have none on purpose: the flow table names a flow after the
# first message with a kind, and an S7 or MMS flow should be named after what it carries.
COTP_KINDS: dict[int, str] = {
    TPDU_CR: "cotp_connect", TPDU_CC: "cotp_connect_confirm", TPDU_ED: "cotp_expedited_data", TPDU_EA: "cotp_expedited_data_ack",
    TPDU_RJ: "cotp_reject", TPDU_AK: "cotp_data_ack", TPDU_ER: "cotp_error",
    TPDU_DR: "cotp_disconnect", TPDU_DC: "cotp_disconnect_confirm", TPDU_DT: "cotp_data",
}
# X.224 13.3-13.12: where the fixed part of each TPDU ends (TPKT header + LI included)
COTP_FIXED_END: dict[int, int] = {
    TPDU_CR: 11, TPDU_CC: 11, TPDU_DR: 11, TPDU_DC: 10, TPDU_ER: 9, TPDU_ED: 9, TPDU_EA: 9,
    TPDU_RJ: 9, TPDU_AK: 9, TPDU_DT: 7,
}
# X.224 13.3.4 variable-part parameter codes
PARAM_TPDU_SIZE, PARAM_CALLING_TSAP, PARAM_CALLED_TSAP = 0xC0, 0xC1, 0xC2
# X.224 13.5.3 d) disconnect reasons
COTP_DR_REASONS: dict[int, str] = {
    0: "not_specified", 1: "congestion_at_tsap", 2: "session_entity_not_attached",
    3: "address_unknown", 128: "normal", 129: "remote_congestion",
    130: "connection_negotiation_failed", 131: "duplicate_source_reference",
    132: "mismatched_references", 133: "protocol_error", 135: "reference_overflow",
    136: "connection_refused", 138: "header_or_parameter_length_invalid",
}
# X.224 13.12.3 reject causes
COTP_REJECT_CAUSES: dict[int, str] = {
    0: "not_specified", 1: "invalid_parameter_code", 2: "invalid_tpdu_type",
    3: "invalid_parameter_value",
}
# S7 TSAPs are two octets: connection type, then rack * 32 + slot (snap7 "PLC connection").
S7_CONNECTION_TYPES: dict[int, str] = {1: "pg", 2: "op", 3: "s7_basic"}
# ISO 8327-1 SPDU identifiers, to say what a non-S7 TSDU starts with
ISO_SPDUS: dict[int, str] = {
    0x01: "give_tokens_data", 0x05: "expedited", 0x09: "finish", 0x0A: "disconnect",
    0x0C: "refuse", 0x0D: "connect", 0x0E: "accept", 0x19: "abort", 0x1A: "abort_accept",
}
# TLS record content types (RFC 8446 5.1): what a TSDU holds after S7comm-plus InitSsl
TLS_CONTENT_TYPES = frozenset({0x14, 0x15, 0x16, 0x17})

A_TPKT = "cotp.invalid_tpkt"
A_LENGTH = "cotp.invalid_length"
A_UNKNOWN_TPDU = "cotp.unknown_tpdu"
A_OVERFLOW = "cotp.reassembly_overflow"

_TPKT = struct.Struct(">BBHBB")       # version, reserved, length, LI, code
_H = struct.Struct(">H")
_HH = struct.Struct(">HH")

Fields = dict[str, Any]
MMSHook = Callable[..., "Message | None"]
_MMS_UNSET: Any = object()
_mms_hook: Any = _MMS_UNSET


def mms_hook() -> MMSHook | None:
    """``edge_agent.decode.mms.decode`` if that module exists, looked up once."""
    global _mms_hook
    if _mms_hook is _MMS_UNSET:
        try:
            module = importlib.import_module("edge_agent.decode.mms")
        except ImportError:
            _mms_hook = None
        else:
            _mms_hook = getattr(module, "decode", None)
    return _mms_hook


def _rack_slot(called: bytes, f: Fields) -> None:
    """Heuristic: only S7 uses (connection type, rack/slot) TSAPs, and MMS called TSAPs
    (0001 ...) do not start with 1-3. Read from the CR only: responders may answer anything."""
    if len(called) == 2 and called[0] in S7_CONNECTION_TYPES:
        f["connection_type_code"] = called[0]
        f["connection_type"] = S7_CONNECTION_TYPES[called[0]]
        f["rack"] = called[1] >> 5
        f["slot"] = called[1] & 0x1F


def _params(pdu: bytes, off: int, end: int, is_cr: bool, f: Fields, an: list[str]) -> None:
    """X.224 13.3.4 parameters: code, length, value."""
    while off + 2 <= end:
        code, length = pdu[off], pdu[off + 1]
        value = pdu[off + 2:off + 2 + length]
        if len(value) < length:
            an.append(A_LENGTH)
            return
        if code == PARAM_TPDU_SIZE and length == 1 and 7 <= value[0] <= 13:
            f["tpdu_size"] = 1 << value[0]
        elif code == PARAM_CALLING_TSAP:
            f["calling_tsap"] = value.hex()
        elif code == PARAM_CALLED_TSAP:
            f["called_tsap"] = value.hex()
            if is_cr:
                _rack_slot(value, f)
        off += 2 + length
    if off != end:
        an.append(A_LENGTH)


class COTPSession(Session):
    """One ISO-on-TCP connection: TSDU reassembly per direction and the upper protocol."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.max_pdu = limits.max_pdu
        self.held: dict[bool, list[bytes]] = {True: [], False: []}
        self.held_len: dict[bool, int] = {True: 0, False: 0}
        self.s7: S7Session | None = None
        self.plus: S7PlusSession | None = None
        self.mms: Any = None

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        n = len(pdu)
        if n < TPKT_HEADER_LEN + 2:
            bad = A_TPKT if n and pdu[0] != TPKT_VERSION else A_LENGTH
            return [Message("cotp", {}, None, (bad,), "")]
        version, _, length, li, code = _TPKT.unpack_from(pdu)
        an: list[str] = []
        if version != TPKT_VERSION:
            an.append(A_TPKT)
        if length != n:
            an.append(A_LENGTH)
        end = n
        if li == 0 or 5 + li > n:
            an.append(A_LENGTH)
            hdr_end = n
        else:
            hdr_end = 5 + li
        tpdu = code >> 4
        if tpdu == TPDU_DT:
            return self._data(pdu, hdr_end, end, li, from_client, an)
        f: Fields = {"tpdu_code": tpdu}
        name = COTP_TPDUS.get(tpdu)
        if name is None:
            f["tpdu"] = "unknown"
            an.append(A_UNKNOWN_TPDU)
            return [Message("cotp", f, None, tuple(an), "unknown")]
        f["tpdu"] = name
        kind = COTP_KINDS.get(tpdu, "")
        is_request: bool | None = None
        if hdr_end < COTP_FIXED_END[tpdu]:
            an.append(A_LENGTH)
        if tpdu == TPDU_CR or tpdu == TPDU_CC:
            is_request = tpdu == TPDU_CR
        if hdr_end >= 10 and tpdu in (TPDU_CR, TPDU_CC, TPDU_DR, TPDU_DC):
            f["dst_ref"], f["src_ref"] = _HH.unpack_from(pdu, 6)
            if hdr_end >= 11 and tpdu == TPDU_DR:
                reason = f["reason_code"] = pdu[10]
                f["reason"] = COTP_DR_REASONS.get(reason, "unknown")
            elif hdr_end >= 11 and tpdu != TPDU_DC:
                if code & 0x0F:
                    f["credit"] = code & 0x0F
                f["class"] = pdu[10] >> 4
                f["extended_formats"] = bool(pdu[10] & 0x02)
                _params(pdu, 11, hdr_end, tpdu == TPDU_CR, f, an)
        elif hdr_end >= 8 and tpdu != TPDU_DR and tpdu != TPDU_DC:
            f["dst_ref"] = _H.unpack_from(pdu, 6)[0]
            if tpdu == TPDU_ER and hdr_end >= 9:
                cause = f["reject_cause_code"] = pdu[8]
                f["reject_cause"] = COTP_REJECT_CAUSES.get(cause, "unknown")
        if hdr_end < end:
            f["user_data_length"] = end - hdr_end
        anomalies = tuple(dict.fromkeys(an)) if len(an) > 1 else tuple(an)
        return [Message("cotp", f, is_request, anomalies, kind)]

    def _data(self, pdu: bytes, hdr_end: int, end: int, li: int, from_client: bool,
              an: list[str]) -> list[Message]:
        # Class 0 (RFC 1006) has LI 2; normal formats of classes 2-4 put DST-REF first.
        nr_at = 6 if li < 4 else 8
        if nr_at >= hdr_end:
            an.append(A_LENGTH)
            eot = True
        else:
            eot = bool(pdu[nr_at] & COTP_EOT)
        held = self.held[from_client]
        if not eot:
            size = self.held_len[from_client] + end - hdr_end
            if size > self.max_pdu:
                held.clear()
                self.held_len[from_client] = 0
                return [Message("cotp", {"tpdu_code": TPDU_DT, "tpdu": "data"}, None,
                                tuple(dict.fromkeys(an + [A_OVERFLOW])), "")]
            held.append(pdu[hdr_end:end])
            self.held_len[from_client] = size
            return [Message("cotp", {"tpdu_code": TPDU_DT, "tpdu": "data"}, None,
                            tuple(dict.fromkeys(an)), "")] if an else []
        if held:
            held.append(pdu[hdr_end:end])
            tsdu = b"".join(held)
            held.clear()
            self.held_len[from_client] = 0
            if len(tsdu) > self.max_pdu:
                an.append(A_OVERFLOW)
                return [Message("cotp", {"tpdu_code": TPDU_DT, "tpdu": "data"}, None,
                                tuple(dict.fromkeys(an)), "")]
        else:
            tsdu = pdu[hdr_end:end]
        msg = self._upper(tsdu, from_client)
        if msg is None:
            return []
        if an:
            msg = msg._replace(anomalies=tuple(dict.fromkeys(an + list(msg.anomalies))))
        return [msg]

    def _upper(self, tsdu: bytes, from_client: bool) -> Message | None:
        n = len(tsdu)
        first = tsdu[0] if n else -1
        if first == S7COMM_PROTOCOL_ID and (self.s7 is not None or n >= 2
                                              and tsdu[1] in S7COMM_ROSCTR):
            if self.s7 is None:
                self.s7 = S7Session(self.limits)
            return self.s7.decode(tsdu, from_client)
        if first == S7COMM_PLUS_PROTOCOL_ID and (self.plus is not None or n >= 2
                                                   and tsdu[1] in S7COMM_PLUS_VERSIONS):
            if self.plus is None:
                self.plus = S7PlusSession(self.limits)
            return self.plus.decode(tsdu, from_client)
        if self.plus is not None and first in TLS_CONTENT_TYPES and n >= 5 and tsdu[1] == 3:
            return self.plus.encrypted(tsdu, from_client)
        hook = mms_hook()
        if hook is not None and n:
            # A hook that pairs requests with responses names its per-connection state class
            # ``hook.state``; it is made on first use and handed back on every call.
            state = getattr(hook, "state", None)
            if state is None:
                msg = hook(tsdu, from_client)
            else:
                if self.mms is None:
                    self.mms = state(self.limits)
                msg = hook(tsdu, from_client, self.mms)
            if msg is not None:
                return msg
        f: Fields = {"tpdu_code": TPDU_DT, "tpdu": "data", "user_data_length": n}
        if n:
            f["spdu_code"] = first
            f["spdu"] = ISO_SPDUS.get(first, "unknown")
        return Message("cotp", f, None, (), "cotp_data")


class COTPDecoder(Decoder):
    """RFC 1006 TPKT framing on TCP 102 with the COTP/S7/MMS stack above it."""

    def probe(self, data: bytes) -> bool:
        if len(data) < TPKT_MIN_LENGTH:
            return False
        version, reserved, length, li, code = _TPKT.unpack_from(data)
        return (version == TPKT_VERSION and reserved == 0 and length >= TPKT_MIN_LENGTH
                and 2 <= li and li + 5 <= length and code >> 4 in COTP_TPDUS
                and (code >> 4 != TPDU_DT or code == 0xF0))

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        off = 0
        n = len(data)
        while n - off >= TPKT_HEADER_LEN:
            if data[off] != TPKT_VERSION:
                return (out, off) if out else ([], -1)
            length = data[off + 2] << 8 | data[off + 3]
            if length < TPKT_HEADER_LEN + 2:
                # Too short for any TPDU: frame it anyway so the record names the problem,
                # unless it cannot even advance the stream.
                if length < TPKT_HEADER_LEN:
                    return (out, off) if out else ([], -1)
            stop = off + length
            if stop > n:
                break
            out.append(bytes(data[off:stop]))
            off = stop
        return out, off

    def session(self, limits: Limits) -> Session:
        return COTPSession(limits)


DECODER = COTPDecoder(name="cotp", tcp_ports=frozenset({COTP_PORT}))
