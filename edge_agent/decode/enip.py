"""EtherNet/IP: encapsulation, Common Packet Format, CIP pairing, cyclic I/O.

Spec: ODVA "The CIP Networks Library, Volume 2: EtherNet/IP Adaptation of CIP", chapter 2
(encapsulation: 2-3 header and status codes, 2-4 commands with the ListIdentity CIP Identity
item, then the Common Packet Format and its items) and chapter 3 (class 0/1 I/O over UDP). TCP
and UDP port 44818 (explicit messaging, ListIdentity broadcasts), UDP 2222 (class 0/1 cyclic
I/O). Little-endian throughout, except the sockaddr in a ListIdentity item and in the sockaddr
info items, which the spec keeps in network (big-endian) order. CIP itself is in ``cip.py``.

Records: one ``enip`` message per encapsulation PDU — ``command_code, command, length,
session_handle, status_code, status, sender_context, options, items`` plus what the command
carries (RegisterSession version, ListIdentity identity, ListServices capabilities) — and, when
it carries CIP, one ``cip`` message per CIP service (a Multiple Service Packet gives one for
itself and one per member, as ICSNPP's cip.log does; an Unconnected Send is unwrapped to the
request it carries). A CIP response carries no path: it takes class/instance/attribute from its
request, found by sender context (SendRRData) or connection sequence count (SendUnitData), at
most ``limits.max_pending`` per flow. A UDP 2222 datagram gives one cheap ``enip`` message of
kind ``io`` (connection id, sequence number, data length), nothing deeper.

``Message.identity`` comes from a ListIdentity reply, or from an Identity object reply
(Get_Attributes_All, Get_Attribute_List/Single) addressed to the device itself. A reply routed
through a port (an Unconnected Send's route, a connection opened with a port segment) speaks for
a module behind the sender — the controller in slot 0 behind an Ethernet module — so its
identity stays in the record's fields and never reaches the inventory as the sender's.

Anomalies (``enip.``): ``truncated``, ``invalid_length`` (the header length disagrees with the
bytes, a command body or CPF item of the wrong size), ``unknown_command``, ``unknown_status``
(an encapsulation status code not in 2-3.2), ``nonzero_options`` (2-3.1: must be zero),
``unknown_item``, ``too_many_items``, ``session_mismatch`` (a handle other than the one the
flow registered); ``cip.unsolicited_response``, ``cip.too_many_pending`` and ``cip.malformed``
(a CIP body the parser gave up on) next to cip.py's own.
"""
from __future__ import annotations

import socket
import struct
from typing import Any

import dpkt

from edge_agent.decode import DECODE_ERRORS, Decoder, Limits, Message, Session
from edge_agent.decode import cip
from edge_agent.decode.cip import Ctx, Fields


class ENIP(dpkt.Packet):
    """Encapsulation header (Vol 2 2-3.1); ``data`` is the command specific data.

    Documents the wire layout and builds test vectors; the hot path reads the same fields with
    ``struct`` because constructing a dpkt object per PDU costs more than decoding it.
    """

    __byte_order__ = "<"
    __hdr__ = (
        ("command", "H", 0),
        ("length", "H", 0),            # bytes after the 24-byte header
        ("session_handle", "I", 0),
        ("status", "I", 0),
        ("sender_context", "8s", b"\x00" * 8),
        ("options", "I", 0),
    )


class CPFItem(dpkt.Packet):
    """Common Packet Format item header (Vol 2); ``length`` bytes of item data follow."""

    __byte_order__ = "<"
    __hdr__ = (
        ("type_id", "H", 0),
        ("length", "H", 0),
    )


class IdentityItem(dpkt.Packet):
    """CIP Identity item body (Vol 2 2-4, ListIdentity) up to the product name (a SHORT_STRING),
    after which comes the one-byte state. The sockaddr is big-endian, so it is one opaque
    16-byte field here."""

    __byte_order__ = "<"
    __hdr__ = (
        ("encapsulation_version", "H", 1),
        ("socket_address", "16s", b"\x00" * 16),
        ("vendor_id", "H", 0),
        ("device_type", "H", 0),
        ("product_code", "H", 0),
        ("revision_major", "B", 0),
        ("revision_minor", "B", 0),
        ("status", "H", 0),
        ("serial_number", "I", 0),
    )


ENIP_PORT = 44818                  # Vol 2 2-2: TCP and UDP, explicit messaging
ENIP_IO_PORT = 2222                # Vol 2 chapter 3: UDP, class 0/1 implicit (I/O) messaging
ENIP_HEADER_LEN = 24               # Vol 2 2-3.1
ENIP_MAX_ITEMS = 16                # CPF items decoded per PDU (real traffic has 2 to 4)

# Vol 2 2-3.2 commands; names as ICSNPP's enip.log spells them, in snake case
ENIP_COMMANDS: dict[int, str] = {
    0x0000: "nop", 0x0004: "list_services", 0x0063: "list_identity",
    0x0064: "list_interfaces", 0x0065: "register_session", 0x0066: "unregister_session",
    0x006F: "send_rr_data", 0x0070: "send_unit_data", 0x0072: "indicate_status",
    0x0073: "cancel",
}
ENIP_KINDS = {code: (name, name + "_exception") for code, name in ENIP_COMMANDS.items()}
CMD_NOP, CMD_LIST_SERVICES, CMD_LIST_IDENTITY, CMD_LIST_INTERFACES = 0x00, 0x04, 0x63, 0x64
CMD_REGISTER, CMD_UNREGISTER, CMD_SEND_RR, CMD_SEND_UNIT = 0x65, 0x66, 0x6F, 0x70

# Vol 2 2-3.3 encapsulation status codes
ENIP_STATUS: dict[int, str] = {
    0x0000: "success", 0x0001: "invalid_command", 0x0002: "insufficient_memory",
    0x0003: "incorrect_data", 0x0064: "invalid_session_handle", 0x0065: "invalid_length",
    0x0069: "unsupported_protocol_version", 0x006A: "cip_service_not_allowed",
}

# Vol 2 Common Packet Format item type ids
CPF_NULL_ADDRESS = 0x0000
CPF_LIST_IDENTITY = 0x000C
CPF_CONNECTED_ADDRESS = 0x00A1
CPF_CONNECTED_DATA = 0x00B1
CPF_UNCONNECTED_DATA = 0x00B2
CPF_LIST_SERVICES = 0x0100
CPF_SOCKADDR_OT = 0x8000
CPF_SOCKADDR_TO = 0x8001
CPF_SEQUENCED_ADDRESS = 0x8002
CPF_ITEMS: dict[int, str] = {
    CPF_NULL_ADDRESS: "null_address", CPF_LIST_IDENTITY: "list_identity",
    0x0086: "cip_security_information", CPF_CONNECTED_ADDRESS: "connected_address",
    CPF_CONNECTED_DATA: "connected_data", CPF_UNCONNECTED_DATA: "unconnected_data",
    CPF_LIST_SERVICES: "list_services", CPF_SOCKADDR_OT: "sockaddr_info_o_t",
    CPF_SOCKADDR_TO: "sockaddr_info_t_o", CPF_SEQUENCED_ADDRESS: "sequenced_address",
    0x8003: "unconnected_message_udp",
}
# An I/O datagram opens with an item count where a command would be, then the address item:
# no encapsulation command is that small with such a length (Vol 2 chapter 3).
IO_ADDRESS_ITEMS = frozenset({CPF_SEQUENCED_ADDRESS, CPF_CONNECTED_ADDRESS})
IO_MAX_ITEMS = 4

A_TRUNCATED = "enip.truncated"
A_LENGTH = "enip.invalid_length"
A_UNKNOWN_COMMAND = "enip.unknown_command"
A_UNKNOWN_STATUS = "enip.unknown_status"
A_OPTIONS = "enip.nonzero_options"
A_UNKNOWN_ITEM = "enip.unknown_item"
A_TOO_MANY_ITEMS = "enip.too_many_items"
A_SESSION = "enip.session_mismatch"
A_UNSOLICITED = "cip.unsolicited_response"
A_TOO_MANY_PENDING = "cip.too_many_pending"
A_CIP_MALFORMED = "cip.malformed"

_HEADER = struct.Struct("<HHII8sI")
_H = struct.Struct("<H")
_HH = struct.Struct("<HH")
_IH = struct.Struct("<IH")
_I = struct.Struct("<I")
_II = struct.Struct("<II")
_IO = struct.Struct("<HHHIIHH")                 # count, 0x8002, 8, conn id, seq, 0x00B1, len
_SOCKADDR = struct.Struct(">HH4s8x")            # sin_family, sin_port, sin_addr (big-endian)
_IDENTITY_HEAD = struct.Struct("<H")

_INTERESTING = frozenset({CPF_CONNECTED_DATA, CPF_UNCONNECTED_DATA})


def _sockaddr(buf: bytes, off: int, f: dict[str, Any]) -> None:
    family, port, addr = _SOCKADDR.unpack_from(buf, off)
    f["socket_address"] = socket.inet_ntop(socket.AF_INET, addr)
    f["socket_port"] = port
    if family != socket.AF_INET:
        f["socket_family"] = family


def _cpf(buf: bytes, off: int, end: int, an: list[str]) -> tuple[list[Fields], list[tuple]]:
    """Items of a Common Packet Format (Vol 2, after 2-4): their summaries, and (type, off, end) of
    every item for the caller to look into."""
    if end - off < 2:
        an.append(A_TRUNCATED)
        return [], []
    count = _H.unpack_from(buf, off)[0]
    p = off + 2
    items: list[Fields] = []
    spans: list[tuple] = []
    if count > ENIP_MAX_ITEMS:
        an.append(A_TOO_MANY_ITEMS)
        count = ENIP_MAX_ITEMS
    for _ in range(count):
        if p + 4 > end:
            an.append(A_LENGTH)
            break
        tid, length = _HH.unpack_from(buf, p)
        p += 4
        stop = p + length
        if stop > end:
            an.append(A_LENGTH)
            stop = end
        name = CPF_ITEMS.get(tid)
        item: Fields = {"type_id": tid, "type": name or "unknown", "length": length}
        if name is None:
            an.append(A_UNKNOWN_ITEM)
        n = stop - p
        if tid == CPF_CONNECTED_ADDRESS:
            if n != 4:
                an.append(A_LENGTH)
            if n >= 4:
                item["connection_id"] = f"0x{_I.unpack_from(buf, p)[0]:08x}"
        elif tid == CPF_SEQUENCED_ADDRESS:
            if n != 8:
                an.append(A_LENGTH)
            if n >= 8:
                conn, seq = _II.unpack_from(buf, p)
                item["connection_id"], item["sequence_number"] = f"0x{conn:08x}", seq
        elif tid == CPF_NULL_ADDRESS:
            if n:
                an.append(A_LENGTH)
        elif tid in (CPF_SOCKADDR_OT, CPF_SOCKADDR_TO):
            if n != 16:
                an.append(A_LENGTH)
            if n >= 16:
                _sockaddr(buf, p, item)
        elif tid == CPF_CONNECTED_DATA and n >= 2:
            item["sequence_count"] = _H.unpack_from(buf, p)[0]
        items.append(item)
        spans.append((tid, p, stop, item))
        p = stop
    if p < end:
        an.append(A_LENGTH)
    return items, spans


def _identity_item(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> dict | None:
    """The CIP Identity item of a ListIdentity reply (Vol 2 2-4, ListIdentity)."""
    if end - off < 34:
        an.append(A_TRUNCATED)
        return None
    f["encapsulation_version"] = _IDENTITY_HEAD.unpack_from(buf, off)[0]
    _sockaddr(buf, off + 2, f)
    vid, dtype, pcode, major, minor, status, serial = cip._IDENTITY.unpack_from(buf, off + 18)
    size = buf[off + 32]
    stop = off + 33 + size
    if stop > end:
        an.append(A_LENGTH)
    name = buf[off + 33:min(stop, end)].decode("latin-1")
    ident = cip.identity_fields(f, vid, dtype, pcode, major, minor, status, serial, name)
    if stop < end:
        f["device_state"] = buf[stop]
        if stop + 1 != end:
            an.append(A_LENGTH)
    else:
        an.append(A_LENGTH)
    return ident


class ENIPSession(Session):
    """Per-flow state: the registered session handle and the CIP requests awaiting replies."""

    def __init__(self, limits: Limits) -> None:
        self.max_pending = max(0, limits.max_pending)
        # Insertion-ordered, so the first key is the oldest request when the bound is hit.
        self.pending: dict[tuple, Ctx] = {}
        self.session_handle: int | None = None
        # T->O ids of connections opened through a port: their replies come from a module
        # behind the sender (see cip.Ctx.routed). Bounded like pending.
        self.routed: dict[str, None] = {}

    # -- entry -------------------------------------------------------------------------------

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        n = len(pdu)
        if n >= 4:
            count, first = _HH.unpack_from(pdu)
            if 0 < count <= IO_MAX_ITEMS and first in IO_ADDRESS_ITEMS:
                return [self._io(pdu)]
        if n < ENIP_HEADER_LEN:
            return [self._partial(pdu, from_client)]
        cmd, length, handle, status, context, options = _HEADER.unpack_from(pdu)
        an: list[str] = []
        kinds = ENIP_KINDS.get(cmd)
        if kinds is None:
            kinds = ("unknown", "unknown_exception")
            an.append(A_UNKNOWN_COMMAND)
        f: Fields = {"command_code": cmd, "command": kinds[0], "length": length,
                     "session_handle": f"0x{handle:08x}", "status_code": status,
                     "status": ENIP_STATUS.get(status, "unknown"),
                     "sender_context": "0x" + context.hex(), "options": options}
        if status not in ENIP_STATUS:
            an.append(A_UNKNOWN_STATUS)
        if options:
            an.append(A_OPTIONS)
        end = ENIP_HEADER_LEN + length
        if end > n:
            an.append(A_TRUNCATED)
            end = n
        elif end < n:
            an.append(A_LENGTH)
        body = end - ENIP_HEADER_LEN
        cips: list[Message] = []
        ident = None
        if cmd in (CMD_SEND_RR, CMD_SEND_UNIT):
            if self.session_handle is not None and handle != self.session_handle:
                an.append(A_SESSION)
            cips = self._send_data(pdu, end, context, f, an)
        elif cmd == CMD_LIST_IDENTITY:
            ident = self._list_reply(pdu, end, f, an, from_client)
        elif cmd in (CMD_LIST_SERVICES, CMD_LIST_INTERFACES):
            self._list_reply(pdu, end, f, an, from_client)
        elif cmd == CMD_REGISTER:
            if body != 4:
                an.append(A_LENGTH)
            if body >= 4:
                f["protocol_version"], f["option_flags"] = _HH.unpack_from(pdu, 24)
            if not from_client and status == 0:
                self.session_handle = handle
        elif cmd == CMD_UNREGISTER:
            if body:
                an.append(A_LENGTH)
            self.session_handle = None
        elif body:
            f["data_length"] = body
        anomalies = tuple(dict.fromkeys(an)) if len(an) > 1 else tuple(an)
        msg = Message("enip", f, from_client, anomalies, kinds[1] if status else kinds[0], ident)
        if cips:
            return [msg, *cips]
        return [msg]

    def close(self, now: float) -> list[Message]:
        self.pending.clear()
        self.routed.clear()
        return []

    # -- encapsulation -----------------------------------------------------------------------

    def _partial(self, pdu: bytes, from_client: bool) -> Message:
        f: Fields = {}
        if len(pdu) >= 2:
            cmd = f["command_code"] = _H.unpack_from(pdu)[0]
            f["command"] = ENIP_COMMANDS.get(cmd, "unknown")
        if len(pdu) >= 4:
            f["length"] = _H.unpack_from(pdu, 2)[0]
        return Message("enip", f, from_client, (A_TRUNCATED,))

    def _io(self, pdu: bytes) -> Message:
        """Class 0/1 cyclic data: counted, never parsed past the CPF items."""
        if len(pdu) >= _IO.size:
            count, t1, l1, conn, seq, t2, l2 = _IO.unpack_from(pdu)
            if count == 2 and t1 == CPF_SEQUENCED_ADDRESS and l1 == 8 and t2 == CPF_CONNECTED_DATA:
                f: Fields = {"connection_id": f"0x{conn:08x}", "sequence_number": seq,
                             "data_length": l2}
                if _IO.size + l2 != len(pdu):
                    return Message("enip", f, None, (A_LENGTH,), "io")
                return Message("enip", f, None, (), "io")
        an: list[str] = []
        items, spans = _cpf(pdu, 0, len(pdu), an)
        f = {"items": items}
        for tid, off, stop, item in spans:
            if "connection_id" in item and "connection_id" not in f:
                f["connection_id"] = item["connection_id"]
                if "sequence_number" in item:
                    f["sequence_number"] = item["sequence_number"]
            elif tid == CPF_CONNECTED_DATA:
                f["data_length"] = stop - off
        return Message("enip", f, None, tuple(dict.fromkeys(an)), "io")

    def _list_reply(self, pdu: bytes, end: int, f: Fields, an: list[str],
                    from_client: bool) -> dict | None:
        """ListIdentity/ListServices/ListInterfaces: an empty request, a CPF reply."""
        if end == ENIP_HEADER_LEN:
            return None
        if from_client:
            an.append(A_LENGTH)                # 2-4.2 to 2-4.4: requests carry no data
            f["data_length"] = end - ENIP_HEADER_LEN
            return None
        items, spans = _cpf(pdu, ENIP_HEADER_LEN, end, an)
        f["items"] = items
        ident = None
        for tid, off, stop, item in spans:
            if tid == CPF_LIST_IDENTITY and ident is None:
                ident = _identity_item(pdu, off, stop, f, an)
            elif tid == CPF_LIST_SERVICES and stop - off >= 4:
                item["protocol_version"], flags = _HH.unpack_from(pdu, off)
                item["capability_flags"] = flags
                item["service_name"] = pdu[off + 4:stop].split(b"\x00", 1)[0].decode("latin-1")
        return ident

    # -- CIP carriers ------------------------------------------------------------------------

    def _send_data(self, pdu: bytes, end: int, context: bytes, f: Fields,
                   an: list[str]) -> list[Message]:
        """SendRRData / SendUnitData (Vol 2 2-4.7, 2-4.8): handle, timeout, CPF with CIP."""
        if end - ENIP_HEADER_LEN < 8:
            an.append(A_LENGTH)
            return []
        f["interface_handle"], f["timeout"] = _IH.unpack_from(pdu, ENIP_HEADER_LEN)
        items, spans = _cpf(pdu, ENIP_HEADER_LEN + 6, end, an)
        f["items"] = items
        conn_id: str | None = None
        for tid, off, stop, item in spans:
            if tid == CPF_CONNECTED_ADDRESS:
                conn_id = item.get("connection_id")
            elif tid in _INTERESTING:
                return self._cip(pdu, off, stop, tid, context, conn_id, item)
        return []

    def _cip(self, pdu: bytes, off: int, stop: int, tid: int, context: bytes,
             conn_id: str | None, item: Fields) -> list[Message]:
        extra: Fields = {}
        if tid == CPF_CONNECTED_DATA:
            if stop - off < 2:
                return [Message("cip", {}, None, (cip.A_TRUNCATED,))]
            seq = item["sequence_count"]
            off += 2
            key: tuple = ("unit", seq)
            if conn_id is not None:
                extra["connection_id"] = conn_id
            extra["sequence_count"] = seq
        else:
            key = ("rr", context)
        if off >= stop:
            return [Message("cip", dict(extra), None, (cip.A_TRUNCATED,))]
        is_request = not pdu[off] & cip.CIP_RESPONSE_BIT
        out_an: list[str] = []
        try:
            if is_request:
                recs, ctx = cip.decode_request(pdu, off, stop)
                if ctx is not None:
                    self._remember(key, ctx, out_an)
            else:
                ctx = self.pending.pop(key, None)
                if ctx is None:
                    out_an.append(A_UNSOLICITED)
                recs = cip.decode_response(pdu, off, stop, ctx)
                if ctx is not None and ctx.routed and ctx.service in cip.FORWARD_OPENS:
                    self._routed_connection(recs[0][0])
        except DECODE_ERRORS:
            return [Message("cip", dict(extra), is_request, (A_CIP_MALFORMED,))]
        msgs: list[Message] = []
        routed = conn_id is not None and conn_id in self.routed
        for i, (f, an, kind, ident) in enumerate(recs):
            if routed:
                ident = None
            if extra:
                f.update(extra)
            if i == 0 and out_an:
                an = out_an + an
            anomalies = tuple(dict.fromkeys(an)) if len(an) > 1 else tuple(an)
            msgs.append(Message("cip", f, is_request, anomalies, kind, ident))
        return msgs

    def _routed_connection(self, f: Fields) -> None:
        conn = f.get("to_connection_id")
        if f.get("status_code") or conn is None:
            return
        if len(self.routed) >= max(1, self.max_pending):
            del self.routed[next(iter(self.routed))]
        self.routed[conn] = None

    def _remember(self, key: tuple, ctx: Ctx, an: list[str]) -> None:
        pending = self.pending
        if key in pending:
            del pending[key]            # a reused context or sequence count replaces the old one
        elif len(pending) >= self.max_pending:
            if pending:
                del pending[next(iter(pending))]
            an.append(A_TOO_MANY_PENDING)
        if self.max_pending:
            pending[key] = ctx


class ENIPDecoder(Decoder):
    """EtherNet/IP on TCP/UDP 44818 and class 0/1 I/O on UDP 2222."""

    def probe(self, data: bytes) -> bool:
        if len(data) >= 6:
            count, first, length = struct.unpack_from("<HHH", data)
            if 0 < count <= IO_MAX_ITEMS and first == CPF_SEQUENCED_ADDRESS and length == 8:
                return True
        if len(data) < ENIP_HEADER_LEN:
            return False
        cmd, length, _, status, _, options = _HEADER.unpack_from(data)
        if cmd == CMD_NOP or cmd not in ENIP_COMMANDS or options or status not in ENIP_STATUS:
            return False
        if cmd in (CMD_SEND_RR, CMD_SEND_UNIT):
            if length < 10:
                return False
            if len(data) >= 32:
                handle, _, count = struct.unpack_from("<IHH", data, 24)
                return handle == 0 and 0 < count <= ENIP_MAX_ITEMS
        elif cmd == CMD_REGISTER:
            return length == 4
        elif cmd == CMD_UNREGISTER:
            return length == 0
        return True

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        off = 0
        n = len(data)
        unpack = _HEADER.unpack_from
        while n - off >= ENIP_HEADER_LEN:
            cmd, length, _, status, _, options = unpack(data, off)
            if cmd not in ENIP_COMMANDS and (options or status not in ENIP_STATUS):
                # Neither a known command nor a clean header: framing is lost here.
                return (out, off) if out else ([], -1)
            stop = off + ENIP_HEADER_LEN + length
            if stop > n:
                break
            out.append(bytes(data[off:stop]))
            off = stop
        return out, off

    def session(self, limits: Limits) -> Session:
        return ENIPSession(limits)


DECODER = ENIPDecoder(name="enip", tcp_ports=frozenset({ENIP_PORT}),
                      udp_ports=frozenset({ENIP_PORT, ENIP_IO_PORT}))
