"""S7comm-plus (S7-1200/1500, protocol id 0x72): header and function decoding for ISO-on-TCP.

Siemens publishes no specification. The layout follows Thomas Wiens' S7comm-plus Wireshark
plugin (packet-s7comm_plus.c: header, integrity part, data part, trailer, fragmentation), the
constants of his S7CommPlusDriver (Functioncode.cs, Opcode.cs, ProtocolVersion.cs) and the
names of the Zeek ICSNPP S7comm analyzer (consts.zeek ``s7comm_plus_functions``). TShark 4.0
has no dissector for it. Carried in COTP DT TPDUs on TCP port 102 (``cotp.py`` owns the
``DECODER``); every field read here is big-endian.

PDU: header (0x72, protocol version, data length), for version 3 an integrity part (digest
length 32 + HMAC digest) at the start of the data, the data part (opcode, function code,
sequence number, session id ...), and a trailer (0x72, version, 0x0000). A PDU too large for
one TPDU is sent in fragments that each carry a header; only the last has the trailer. The
object tree after the data header is not decoded and integrity digests are not checked:
their sizes are counted. After InitSsl (firmware V17+) the TPDUs carry TLS records, which are
counted as ``encrypted``.

Anomalies (prefix ``s7comm_plus.``): ``invalid_length``, ``unknown_version``, ``unknown_opcode``,
``unknown_function``, ``unsolicited_response``, ``too_many_pending``,
``reassembly_overflow``.
"""
from __future__ import annotations

import re
import struct
from typing import Any

import dpkt

from edge_agent.decode import Limits, Message

S7COMM_PLUS_PROTOCOL_ID = 0x72
S7COMM_PLUS_HEADER_LEN = 4           # protocol id, version, data length
S7COMM_PLUS_TRAILER_LEN = 4          # protocol id, version, 0x0000
S7COMM_PLUS_DIGEST_LEN = 32          # plugin s7commp_decode_integrity: always 32 (HMAC-SHA256)
S7COMM_PLUS_IDENTITY_SCAN = 4096     # CreateObject response bytes searched for the PLC's id


class S7PlusHeader(dpkt.Packet):
    """Frame header; test vectors are built with these classes, the hot path uses struct."""

    __hdr__ = (
        ("protocol_id", "B", S7COMM_PLUS_PROTOCOL_ID),
        ("version", "B", 3),
        ("data_length", "H", 0),
    )


class S7PlusRequest(dpkt.Packet):
    """Data part header of a request (opcode 0x31)."""

    __hdr__ = (
        ("opcode", "B", 0x31),
        ("reserved", "H", 0),
        ("function", "H", 0x054C),
        ("reserved2", "H", 0),
        ("seq", "H", 1),
        ("session_id", "I", 0),
        ("transport_flags", "B", 0x34),
    )


class S7PlusResponse(dpkt.Packet):
    """Data part header of a response (opcode 0x32 or 0x02)."""

    __hdr__ = (
        ("opcode", "B", 0x32),
        ("reserved", "H", 0),
        ("function", "H", 0x054C),
        ("reserved2", "H", 0),
        ("seq", "H", 1),
        ("transport_flags", "B", 0x00),
    )


# Protocol versions (S7CommPlusDriver ProtocolVersion.cs; plugin pdutype_names)
S7COMM_PLUS_VERSIONS: dict[int, str] = {
    0x01: "v1", 0x02: "v2", 0x03: "v3", 0xFE: "system_event", 0xFF: "keep_alive",
}
VERSION_V3, VERSION_SYSTEM_EVENT, VERSION_KEEP_ALIVE = 0x03, 0xFE, 0xFF

# Opcodes (plugin opcode_names)
S7COMM_PLUS_OPCODES: dict[int, str] = {
    0x31: "request", 0x32: "response", 0x33: "notification", 0x02: "response2",
}
OPCODE_REQUEST, OPCODE_RESPONSE, OPCODE_NOTIFICATION, OPCODE_RESPONSE2 = 0x31, 0x32, 0x33, 0x02

# Function codes (S7CommPlusDriver Functioncode.cs; ICSNPP names in snake case)
S7COMM_PLUS_FUNCS: dict[int, str] = {
    0x04B1: "error", 0x04BB: "explore", 0x04CA: "create_object", 0x04D4: "delete_object",
    0x04F2: "set_variable", 0x04FC: "get_variable", 0x0506: "add_link",
    0x051A: "remove_link", 0x0524: "get_link", 0x0542: "set_multi_variables",
    0x054C: "get_multi_variables", 0x0556: "begin_sequence", 0x0560: "end_sequence",
    0x056B: "invoke", 0x057C: "set_var_sub_streamed", 0x0586: "get_var_sub_streamed",
    0x0590: "get_variables_address", 0x059A: "abort", 0x05A9: "error", 0x05B3: "init_ssl",
}
FUNC_CREATE_OBJECT = 0x04CA
# Observed, not documented: requests with this transport flag get no response (ICSNPP's
# baseline shows HMI SetVariable requests with flags 0x74 never answered, 0x34 answered).
TRANSPORT_FLAG_NO_RESPONSE = 0x40

# The CreateObject response of a CPU names it: "1;6ES7 511-1AK00-0AB0 ;V2.0".
_PLC_ID = re.compile(rb"(6E[SW]7 ?[0-9A-Z]{3}-[0-9A-Z]{5}-[0-9A-Z]{4}) *"
                     rb";V(\d{1,2}\.\d{1,2}(?:\.\d{1,2})?)")

A_LENGTH = "s7comm_plus.invalid_length"
A_UNKNOWN_VERSION = "s7comm_plus.unknown_version"
A_UNKNOWN_OPCODE = "s7comm_plus.unknown_opcode"
A_UNKNOWN_FUNCTION = "s7comm_plus.unknown_function"
A_UNSOLICITED = "s7comm_plus.unsolicited_response"
A_TOO_MANY_PENDING = "s7comm_plus.too_many_pending"
A_OVERFLOW = "s7comm_plus.reassembly_overflow"

_BBH = struct.Struct(">BBH")
_OP = struct.Struct(">BxxHxxH")       # opcode, function, sequence number
_I = struct.Struct(">I")

Fields = dict[str, Any]


class S7PlusSession:
    """Per-connection S7comm-plus state: fragments per direction, requests by sequence."""

    def __init__(self, limits: Limits) -> None:
        self.max_pending = max(0, limits.max_pending)
        self.max_pdu = limits.max_pdu
        self.pending: dict[int, int] = {}                 # seq -> function code
        self.fragments: dict[bool, tuple[bytes, int]] = {}  # direction -> (data, count)

    def decode(self, pdu: bytes, from_client: bool) -> Message | None:
        """One COTP user-data unit; None while a fragmented PDU is still incomplete."""
        n = len(pdu)
        if n < S7COMM_PLUS_HEADER_LEN:
            return Message("s7comm_plus", {}, None, (A_LENGTH,), "")
        _, version, dlen = _BBH.unpack_from(pdu)
        version_name = S7COMM_PLUS_VERSIONS.get(version)
        f: Fields = {"version": version, "version_name": version_name or "unknown"}
        if version_name is None:
            return Message("s7comm_plus", f, None, (A_UNKNOWN_VERSION,), "unknown")
        an: list[str] = []
        if version == VERSION_KEEP_ALIVE:
            # plugin: 0x72 0xff, a sequence number, one reserved octet; no length, no trailer
            f["keep_alive_seq"] = pdu[2]
            return Message("s7comm_plus", f, None, (), "keep_alive")
        f["data_length"] = dlen
        end = S7COMM_PLUS_HEADER_LEN + dlen
        # plugin: a PDU ending right after its data has no trailer, so more fragments follow
        more = n == end
        if end > n:
            an.append(A_LENGTH)        # truncated: decode what arrived, wait for nothing
            end = n
        elif not more and (n != end + S7COMM_PLUS_TRAILER_LEN or pdu[end] != 0x72):
            an.append(A_LENGTH)
        off = S7COMM_PLUS_HEADER_LEN
        if version == VERSION_V3 and off < end:
            # V3 (S7-1500 >= FW 1.5) puts the integrity part first, in every fragment.
            digest = pdu[off]
            f["digest_length"] = digest
            if digest != S7COMM_PLUS_DIGEST_LEN or off + 1 + digest > end:
                an.append(A_LENGTH)
            off = min(end, off + 1 + digest)
        body = pdu[off:end]

        held = self.fragments.pop(from_client, None)
        if more:
            data, count = (held[0] + body, held[1] + 1) if held else (body, 1)
            if len(data) > self.max_pdu:
                return Message("s7comm_plus", f, None, (A_OVERFLOW,), "")
            self.fragments[from_client] = (data, count)
            return Message("s7comm_plus", f, None, tuple(an), "") if an else None
        if held is not None:
            body = held[0] + body
            f["fragments"] = held[1] + 1
        if version == VERSION_SYSTEM_EVENT:
            return Message("s7comm_plus", f, None, tuple(an), "system_event")
        return self._data(body, from_client, f, an)

    def _data(self, body: bytes, from_client: bool, f: Fields, an: list[str]) -> Message:
        n = len(body)
        if n < 1:
            an.append(A_LENGTH)
            return Message("s7comm_plus", f, None, tuple(an), "")
        opcode = body[0]
        f["opcode"] = opcode
        name = S7COMM_PLUS_OPCODES.get(opcode)
        f["opcode_name"] = name or "unknown"
        if name is None:
            an.append(A_UNKNOWN_OPCODE)
            return Message("s7comm_plus", f, None, tuple(an), "unknown")
        if opcode == OPCODE_NOTIFICATION:
            if n >= 5:
                f["subscription_id"] = _I.unpack_from(body, 1)[0]
            else:
                an.append(A_LENGTH)
            return Message("s7comm_plus", f, None, tuple(an), "notification")
        is_request = opcode == OPCODE_REQUEST
        if n < (14 if is_request else 10):
            an.append(A_LENGTH)
            return Message("s7comm_plus", f, is_request, tuple(an), "")
        _, fc, seq = _OP.unpack_from(body)
        f["func_code"] = fc
        func = S7COMM_PLUS_FUNCS.get(fc)
        f["func"] = func or "unknown"
        if func is None:
            an.append(A_UNKNOWN_FUNCTION)
        f["seq"] = seq
        ident = None
        if is_request:
            f["session_id"] = _I.unpack_from(body, 9)[0]
            flags = f["transport_flags"] = body[13]
            if not flags & TRANSPORT_FLAG_NO_RESPONSE:
                self._remember(seq, fc, an)
        else:
            f["transport_flags"] = body[9]
            if self.pending.pop(seq, None) is None:
                an.append(A_UNSOLICITED)
            if fc == FUNC_CREATE_OBJECT and not from_client:
                ident = _identity(body, f)
        anomalies = tuple(dict.fromkeys(an)) if len(an) > 1 else tuple(an)
        return Message("s7comm_plus", f, is_request, anomalies, func or "unknown", ident)

    def _remember(self, seq: int, fc: int, an: list[str]) -> None:
        pending = self.pending
        if seq in pending:
            del pending[seq]
        elif len(pending) >= self.max_pending:
            if pending:
                del pending[next(iter(pending))]
            an.append(A_TOO_MANY_PENDING)
        if self.max_pending:
            pending[seq] = fc

    def encrypted(self, pdu: bytes, from_client: bool) -> Message:
        """A TLS record on a connection that switched to TLS after InitSsl."""
        f: Fields = {"tls_content_type": pdu[0], "encrypted_length": len(pdu)}
        return Message("s7comm_plus", f, None, (), "encrypted")


def _identity(body: bytes, f: Fields) -> dict[str, Any] | None:
    m = _PLC_ID.search(body, 0, S7COMM_PLUS_IDENTITY_SCAN)
    if m is None:
        return None
    order = m.group(1).decode("ascii")
    firmware = "V" + m.group(2).decode("ascii")
    f["order_number"] = order
    f["firmware_version"] = firmware
    return {"vendor": "Siemens", "order_number": order, "firmware": firmware,
            "device_type": "plc"}
