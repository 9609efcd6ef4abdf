"""BACnet/IP: BVLL, NPDU and APDU decoding, service decoding, request pairing, device identity.

Spec: ANSI/ASHRAE 135 "BACnet": Annex J (BACnet/IP, J.2 BVLL messages and functions), clause 6
(network layer: 6.2 NPDU header and control octet, 6.4 network layer messages), clause 20
(20.1 APDU headers of the eight PDU types, segmentation fields; 20.2 tag encoding of
application and context tagged primitives, in :mod:`edge_agent.decode.bacnet_tags`), clauses
13-17 and 21 (service productions, in :mod:`edge_agent.decode.bacnet_services`, and the
enumerations in :mod:`edge_agent.decode.bacnet_tables`). UDP port 47808 (0xBAC0, J.1), other
ports by probe. Every multi-byte field is big-endian.

A record carries ``bvlc_function_code, bvlc_function`` and, for BVLL functions that carry an
NPDU, ``npdu_control`` with the routing fields present (``dnet, dadr, snet, sadr, hop_count``),
``priority`` and either ``network_message_code, network_message`` or the APDU:
``pdu_type_code, pdu_type, invoke_id, pdu_service_code, pdu_service`` (ICSNPP bacnet.log's
vocabulary in snake case: ``confirmed_request`` ... ``error_pdu``) and what the service says:
``object_type_code, object_type, instance_number, property_code, property, array_index, value,
priority`` for the property services, ``properties`` for the multiple ones, the device's
``object_type, instance_number`` and ``max_apdu, segmentation, vendor_id, vendor`` for I-Am;
``error_class_code, error_class, error_code, error`` (Error), ``reject_reason_code,
reject_reason`` (Reject), ``abort_reason_code, abort_reason`` (Abort); ``result_code, result``
(BVLC-Result). Segmented PDUs add ``segmented, more_follows, sequence_number, window_size,
segment_count``; segments are reassembled (bounded by ``limits.max_pdu``) and the last one
carries the decoded service. Responses take the object and property of their request.
``kind`` is the service for requests and their acks, ``<service>_exception`` for an Error, a
Reject or a server's Abort (``reject_exception``, ``abort_exception`` when the request was not
seen), ``abort`` for a client's own, ``segment_ack``, else the network message or BVLL function.

Identity: I-Am gives ``vendor_id`` and ``vendor``; a ReadProperty(-Multiple) ack about a device
object gives vendor, model, firmware, name, location, description and serial. Messages that
arrive through a BACnet router (SNET present) reveal the remote device, not the IP sender, so
they give no identity.

Anomalies (prefixed ``bacnet.``): ``invalid_bvlc`` (type other than 0x81, unknown function),
``invalid_length`` (BVLC length disagreeing with the datagram, a BVLL function body of the wrong
size, a tag whose length disagrees with its type), ``truncated`` (the datagram or a service ends
inside a field), ``invalid_npdu`` (version not 1, reserved control bits, empty SADR, reserved
network message), ``invalid_apdu`` (PDU types 8-15), ``unknown_service``,
``unsolicited_response``, ``too_many_pending``.
"""
from __future__ import annotations

import struct
from typing import Any

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session
from edge_agent.decode.bacnet_services import (
    BACNET_ACK_PARSERS,
    BACNET_CONFIRMED_PARSERS,
    BACNET_UNCONFIRMED_PARSERS,
    Service,
    error_pair,
    first_property,
)
from edge_agent.decode.bacnet_tables import (
    BACNET_ABORT_REASONS,
    BACNET_BVLC_FUNCTIONS,
    BACNET_BVLC_RESULTS,
    BACNET_CONFIRMED_SERVICES,
    BACNET_NETWORK_MESSAGES,
    BACNET_NETWORK_REJECT_REASONS,
    BACNET_REJECT_REASONS,
    BACNET_UNCONFIRMED_SERVICES,
    BACNET_VENDORS,
)
from edge_agent.decode.bacnet_tags import (
    APP,
    BACNET_MAX_VALUES,
    CLOSE,
    OPEN,
    InvalidTag,
    TagReader,
    Truncated,
)


class BVLC(dpkt.Packet):
    """BACnet Virtual Link Control header (J.2); ``data`` is the function's body."""

    __hdr__ = (
        ("type", "B", 0x81),
        ("function", "B", 0x0A),
        ("length", "H", 4),        # the whole BVLL message, header included
    )


class NPDU(dpkt.Packet):
    """NPDU fixed part (6.2); routing fields follow as the control octet says."""

    __hdr__ = (
        ("version", "B", 1),
        ("control", "B", 0),
    )


class ConfirmedRequest(dpkt.Packet):
    """BACnet-Confirmed-Request-PDU, unsegmented (20.1.2); ``data`` is the service request."""

    __hdr__ = (
        ("pdu_flags", "B", 0x00),  # type 0 << 4 | SEG | MOR | SA
        ("max_resp", "B", 0x05),   # max segments << 4 | max APDU (5 = 1476 octets)
        ("invoke_id", "B", 0),
        ("service", "B", 12),
    )


class UnconfirmedRequest(dpkt.Packet):
    """BACnet-Unconfirmed-Request-PDU (20.1.3)."""

    __hdr__ = (
        ("pdu_flags", "B", 0x10),
        ("service", "B", 8),
    )


class ComplexAck(dpkt.Packet):
    """BACnet-ComplexACK-PDU, unsegmented (20.1.5)."""

    __hdr__ = (
        ("pdu_flags", "B", 0x30),
        ("invoke_id", "B", 0),
        ("service", "B", 12),
    )


BACNET_PORT = 0xBAC0             # J.1.1: 47808
BACNET_BVLC_TYPE = 0x81          # J.2: BACnet/IP (0x82 is BACnet/IPv6, Annex U)
BACNET_BVLC_HEADER = 4
BACNET_FORWARDED = 0x04          # J.2.9: B/IP address of the originator precedes the NPDU
BACNET_NPDU_FUNCS = frozenset({0x04, 0x09, 0x0A, 0x0B})   # J.2: functions that carry an NPDU
BACNET_NPDU_VERSION = 1          # 6.2.1
BACNET_NPDU_RESERVED = 0x50      # 6.2.2: control bits 6 and 4 shall be zero
BACNET_PROBE_BYTES = 256        # what the flow table hands a probe at most
# 20.1.2.5: max APDU length accepted, encoded in four bits
BACNET_MAX_APDU = (50, 128, 206, 480, 1024, 1476)
# 20.1.2.4: max segments accepted (0 = unspecified, 7 = more than 64)
BACNET_MAX_SEGMENTS = (None, 2, 4, 8, 16, 32, 64, 65)
BACNET_MAX_WINDOW = 127          # 20.1.2.8: proposed window size 1-127
BACNET_PRIORITIES = ("normal", "urgent", "critical_equipment", "life_safety")   # 6.2.2
# clause 20.1: APDU types, named as ICSNPP logs them
BACNET_PDU_TYPES = ("confirmed_request", "unconfirmed_request", "simple_ack", "complex_ack",
                    "segment_ack", "error_pdu", "reject_pdu", "abort_pdu")
# BVLL functions a node sends to ask something of a BBMD (the others answer or carry NPDUs)
BACNET_BVLC_REQUESTS = frozenset({0x01, 0x02, 0x05, 0x06, 0x08})
BACNET_BVLC_FIXED = {0x00: 2, 0x02: 0, 0x05: 2, 0x06: 0, 0x08: 6}   # J.2: body sizes
# 6.4: network layer messages that ask (the rest answer or announce)
BACNET_NETWORK_REQUESTS = frozenset({0x00, 0x06, 0x08, 0x09, 0x0A, 0x0D, 0x10, 0x12})
BACNET_OBJECT_DEVICE = 8
# Device object properties -> the inventory's IDENTITY_KEYS
BACNET_IDENTITY: dict[int, str] = {
    121: "vendor", 120: "vendor_id", 70: "model", 44: "firmware", 77: "name", 58: "location",
    28: "description", 372: "serial",
}

A_BVLC = "bacnet.invalid_bvlc"
A_LENGTH = "bacnet.invalid_length"
A_TRUNCATED = "bacnet.truncated"
A_NPDU = "bacnet.invalid_npdu"
A_APDU = "bacnet.invalid_apdu"
A_UNKNOWN_SERVICE = "bacnet.unknown_service"
A_UNSOLICITED = "bacnet.unsolicited_response"
A_TOO_MANY_PENDING = "bacnet.too_many_pending"

_H = struct.Struct(">H")
_I = struct.Struct(">I")
_BVLC_HEAD = struct.Struct(">BBH")

Fields = dict[str, Any]


# --- services: a production that breaks off is an anomaly --------------------------------------

def _service(parser: Service | None, b: bytes, off: int, end: int, f: Fields,
             an: list[str]) -> None:
    if parser is None:
        return
    try:
        parser(TagReader(b, off, end), f)
    except Truncated:
        an.append(A_TRUNCATED)
    except InvalidTag:
        an.append(A_LENGTH)
    if "properties" in f:
        first_property(f)


def _error_pdu(b: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    """20.1.7 and 21 Error productions: most are (class, code); some wrap them in [0] (or in
    a construct whose first element is the error) -- the first enumerated pair is the error."""
    r = TagReader(b, off, end)
    try:
        while True:
            tn, cls, n, p = r.peek()
            if cls == APP and tn == 9:
                error_pair(r, f)
                return
            r.off = p if cls in (OPEN, CLOSE) else p + (0 if cls == APP and tn == 1 else n)
    except Truncated:
        an.append(A_TRUNCATED)
    except InvalidTag:
        an.append(A_LENGTH)


# --- identity ----------------------------------------------------------------------------------

def _identity(f: Fields) -> dict[str, Any] | None:
    ident: dict[str, Any] = {}
    props = f.get("properties") or ([f] if "property_code" in f else [])
    for p in props:
        key = BACNET_IDENTITY.get(p.get("property_code", -1))
        v = p.get("value")
        if (key and p.get("object_type_code") == BACNET_OBJECT_DEVICE and "array_index" not in p
                and isinstance(v, (str, int)) and not isinstance(v, bool) and v != ""):
            ident[key] = v.strip() if isinstance(v, str) else v
            if key == "vendor_id" and isinstance(v, int):
                vendor = BACNET_VENDORS.get(v)
                if vendor:
                    ident.setdefault("vendor", vendor)
    return ident or None


# --- the session -------------------------------------------------------------------------------

class _Segments:
    """A segmented message being reassembled (20.1.2.7, 20.1.5.4), bounded."""

    __slots__ = ("count", "data", "next_seq", "overflow", "service")

    def __init__(self, service: int) -> None:
        self.service = service
        self.next_seq = 0
        self.data = bytearray()
        self.count = 0
        self.overflow = False


class BACnetSession(Session):
    """Per-flow state: confirmed requests awaiting an answer, segmented messages in progress."""

    def __init__(self, limits: Limits) -> None:
        self.max_pending = max(0, limits.max_pending)
        self.max_pdu = limits.max_pdu
        # (invoke id, requester is the flow's client) -> (service choice, request fields)
        self.pending: dict[tuple[int, bool], tuple[int, Fields]] = {}
        self.segments: dict[tuple[int, bool], _Segments] = {}

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        b = pdu
        n = len(b)
        an: list[str] = []
        f: Fields = {}
        if n < BACNET_BVLC_HEADER:
            return [Message("bacnet", f, None, (A_TRUNCATED,))]
        btype, func, length = _BVLC_HEAD.unpack_from(b)
        f["bvlc_function_code"] = func
        name = BACNET_BVLC_FUNCTIONS.get(func)
        f["bvlc_function"] = name or "unknown"
        if btype != BACNET_BVLC_TYPE:
            f["bvlc_type"] = btype
            an.append(A_BVLC)
            return [self._done(f, an, None, "", None)]
        if name is None:
            an.append(A_BVLC)
        end = n
        if length != n:
            if length > n:
                an.append(A_TRUNCATED)
            else:
                an.append(A_LENGTH)
                end = max(length, BACNET_BVLC_HEADER)
        off = BACNET_BVLC_HEADER
        if func not in BACNET_NPDU_FUNCS:
            is_req = func in BACNET_BVLC_REQUESTS if name else None
            self._bvll_body(b, off, end, func, f, an)
            return [self._done(f, an, is_req, name or "unknown", None)]
        if func == BACNET_FORWARDED:
            if end - off < 6:
                an.append(A_TRUNCATED)
                return [self._done(f, an, None, name, None)]   # type: ignore[arg-type]
            f["originating_ip"] = ".".join(map(str, b[off:off + 4]))
            f["originating_port"] = _H.unpack_from(b, off + 4)[0]
            off += 6
        return [self._npdu(b, off, end, f, an, from_client)]

    def _bvll_body(self, b: bytes, off: int, end: int, func: int, f: Fields,
                   an: list[str]) -> None:
        size = BACNET_BVLC_FIXED.get(func)
        body = end - off
        if size is not None and body != size:
            an.append(A_TRUNCATED if body < size else A_LENGTH)
        if func == 0x00 and body >= 2:
            code = f["result_code"] = _H.unpack_from(b, off)[0]
            f["result"] = BACNET_BVLC_RESULTS.get(code, "unknown")
        elif func == 0x05 and body >= 2:
            f["ttl"] = _H.unpack_from(b, off)[0]
        elif func in (0x01, 0x03, 0x07):
            if body % 10:
                an.append(A_LENGTH)      # J.2.2-J.2.8: BDT and FDT entries are 10 octets each
            f["entries"] = body // 10

    def _npdu(self, b: bytes, off: int, end: int, f: Fields, an: list[str],
              from_client: bool) -> Message:
        if end - off < 2:
            an.append(A_TRUNCATED)
            return self._done(f, an, None, f["bvlc_function"], None)
        version, ctrl = b[off], b[off + 1]
        f["npdu_control"] = ctrl
        if version != BACNET_NPDU_VERSION:
            f["npdu_version"] = version
            an.append(A_NPDU)
        if ctrl & BACNET_NPDU_RESERVED:
            an.append(A_NPDU)
        off += 2
        routed = False
        try:
            if ctrl & 0x20:            # 6.2.2 bit 5: DNET, DLEN, DADR present
                if off + 3 > end:
                    raise Truncated
                f["dnet"] = _H.unpack_from(b, off)[0]
                dlen = b[off + 2]
                if off + 3 + dlen > end:
                    raise Truncated
                f["dadr"] = b[off + 3:off + 3 + dlen].hex()
                off += 3 + dlen
            if ctrl & 0x08:            # bit 3: SNET, SLEN, SADR present
                if off + 3 > end:
                    raise Truncated
                f["snet"] = _H.unpack_from(b, off)[0]
                slen = b[off + 2]
                if not slen or f["snet"] == 0xFFFF:
                    an.append(A_NPDU)   # 6.2.2.1: SLEN 0 and SNET 0xFFFF are invalid
                if off + 3 + slen > end:
                    raise Truncated
                f["sadr"] = b[off + 3:off + 3 + slen].hex()
                off += 3 + slen
                routed = True
            if ctrl & 0x20:
                if off >= end:
                    raise Truncated
                f["hop_count"] = b[off]
                off += 1
        except Truncated:
            an.append(A_TRUNCATED)
            return self._done(f, an, None, f["bvlc_function"], None)
        if ctrl & 0x04:
            f["expecting_reply"] = True
        if ctrl & 0x03:
            f["priority"] = BACNET_PRIORITIES[ctrl & 0x03]
        if ctrl & 0x80:                # bit 7: a network layer message, not an APDU
            return self._network_message(b, off, end, f, an)
        return self._apdu(b, off, end, f, an, from_client, routed)

    def _network_message(self, b: bytes, off: int, end: int, f: Fields,
                         an: list[str]) -> Message:
        if off >= end:
            an.append(A_TRUNCATED)
            return self._done(f, an, None, f["bvlc_function"], None)
        mt = f["network_message_code"] = b[off]
        off += 1
        if mt >= 0x80:                 # 6.2.2: proprietary messages carry a vendor id
            f["network_message"] = "proprietary"
            if off + 2 <= end:
                vid = f["vendor_id"] = _H.unpack_from(b, off)[0]
                f["vendor"] = BACNET_VENDORS.get(vid, "unknown")
            else:
                an.append(A_TRUNCATED)
            return self._done(f, an, None, "proprietary_network_message", None)
        name = BACNET_NETWORK_MESSAGES.get(mt)
        if name is None:
            an.append(A_NPDU)
        f["network_message"] = name or "unknown"
        body = end - off
        if mt in (0x01, 0x02, 0x04, 0x05, 0x00) and body:
            if mt == 0x02 and body >= 3:   # 6.4.3: one network and a performance index
                f["networks"] = [_H.unpack_from(b, off)[0]]
            else:
                f["networks"] = [_H.unpack_from(b, off + i)[0]
                                 for i in range(0, min(body, 2 * BACNET_MAX_VALUES) - 1, 2)]
                if body & 1:
                    an.append(A_LENGTH)
        elif mt == 0x03 and body >= 3:
            reason = f["reject_reason_code"] = b[off]
            f["reject_reason"] = BACNET_NETWORK_REJECT_REASONS.get(reason, "unknown")
            f["networks"] = [_H.unpack_from(b, off + 1)[0]]
        elif mt == 0x13 and body >= 3:
            f["networks"] = [_H.unpack_from(b, off)[0]]
        kind = name or "unknown"
        return self._done(f, an, mt in BACNET_NETWORK_REQUESTS if name else None, kind, None)

    def _apdu(self, b: bytes, off: int, end: int, f: Fields, an: list[str], from_client: bool,
              routed: bool) -> Message:
        if off >= end:
            an.append(A_TRUNCATED)
            return self._done(f, an, None, f["bvlc_function"], None)
        head = b[off]
        ptype = head >> 4
        f["pdu_type_code"] = ptype
        if ptype > 7:
            f["pdu_type"] = "unknown"
            an.append(A_APDU)
            return self._done(f, an, None, "unknown", None)
        f["pdu_type"] = BACNET_PDU_TYPES[ptype]
        if ptype == 1:
            return self._unconfirmed(b, off, end, f, an, routed)
        if ptype == 0:
            return self._confirmed(b, off, end, f, an, from_client)
        return self._response(b, off, end, head, ptype, f, an, from_client, routed)

    def _unconfirmed(self, b: bytes, off: int, end: int, f: Fields, an: list[str],
                     routed: bool) -> Message:
        if off + 2 > end:
            an.append(A_TRUNCATED)
            return self._done(f, an, True, "unconfirmed_request", None)
        svc = f["pdu_service_code"] = b[off + 1]
        name = BACNET_UNCONFIRMED_SERVICES.get(svc)
        if name is None:
            an.append(A_UNKNOWN_SERVICE)
        f["pdu_service"] = name or "unknown"
        _service(BACNET_UNCONFIRMED_PARSERS.get(svc), b, off + 2, end, f, an)
        identity = None
        if svc == 0 and "vendor_id" in f and not routed:
            identity = {"vendor_id": f["vendor_id"]}
            if f["vendor"] != "unknown":
                identity["vendor"] = f["vendor"]
        return self._done(f, an, True, name or "unknown", identity)

    def _confirmed(self, b: bytes, off: int, end: int, f: Fields, an: list[str],
                   from_client: bool) -> Message:
        head = b[off]
        seg = head & 0x08
        hlen = 6 if seg else 4        # 20.1.2: + sequence number, window size when segmented
        if off + hlen > end:
            if off + 3 <= end:
                f["invoke_id"] = b[off + 2]
            an.append(A_TRUNCATED)
            return self._done(f, an, True, "confirmed_request", None)
        resp = b[off + 1]
        f["max_segments"] = BACNET_MAX_SEGMENTS[(resp >> 4) & 7]
        f["max_apdu"] = BACNET_MAX_APDU[resp & 15] if resp & 15 < 6 else None
        if resp & 15 >= 6:
            an.append(A_APDU)
        invoke = f["invoke_id"] = b[off + 2]
        if head & 0x02:
            f["segmented_response_accepted"] = True
        svc = b[off + hlen - 1]
        f["pdu_service_code"] = svc
        name = BACNET_CONFIRMED_SERVICES.get(svc)
        if name is None:
            an.append(A_UNKNOWN_SERVICE)
        f["pdu_service"] = name or "unknown"
        body: tuple[bytes, int, int] | None = (b, off + hlen, end)
        if seg:
            body = self._segment(b, off, end, hlen, f, (invoke, from_client), svc)
        if body is not None:
            _service(BACNET_CONFIRMED_PARSERS.get(svc), *body, f, an)
        key = (invoke, from_client)
        pending = self.pending
        if key in pending:
            del pending[key]           # a reused invoke id replaces the old request
        elif len(pending) >= self.max_pending:
            if pending:
                del pending[next(iter(pending))]
            an.append(A_TOO_MANY_PENDING)
        if self.max_pending:
            pending[key] = (svc, f)
        return self._done(f, an, True, name or "unknown", None)

    def _segment(self, b: bytes, off: int, end: int, hlen: int, f: Fields,
                 key: tuple[int, bool], svc: int) -> tuple[bytes, int, int] | None:
        """Account one segment; the service data of the whole message once it is complete."""
        seq = f["sequence_number"] = b[off + hlen - 3]
        f["window_size"] = b[off + hlen - 2]
        f["segmented"] = True
        more = f["more_follows"] = bool(b[off] & 0x04)
        st = self.segments.get(key)
        if seq == 0:
            if st is None and len(self.segments) >= max(1, self.max_pending):
                del self.segments[next(iter(self.segments))]
            st = self.segments[key] = _Segments(svc)
        if st is None or st.service != svc:
            return None               # the first segment was not seen: nothing to decode
        if seq == st.next_seq:
            st.count += 1
            st.next_seq = (seq + 1) & 0xFF
            if len(st.data) + end - off - hlen > self.max_pdu:
                st.overflow = True
            if not st.overflow:
                st.data += b[off + hlen:end]
        elif (st.next_seq - seq) & 0xFF > BACNET_MAX_WINDOW:
            # Not a retransmission within the window: a segment was lost (20.1.2.7), so the
            # message cannot be decoded whole.
            st.overflow = True
            f["segment_lost"] = True
        f["segment_count"] = st.count
        if more:
            return None
        del self.segments[key]
        if st.overflow:
            return None
        data = bytes(st.data)
        return data, 0, len(data)

    def _response(self, b: bytes, off: int, end: int, head: int, ptype: int, f: Fields,
                  an: list[str], from_client: bool, routed: bool) -> Message:
        if off + 2 > end:
            an.append(A_TRUNCATED)
            return self._done(f, an, False, f["pdu_type"], None)
        invoke = f["invoke_id"] = b[off + 1]
        if ptype == 4:                 # 20.1.6 SegmentACK: sent by whoever receives segments
            if off + 4 > end:
                an.append(A_TRUNCATED)
            else:
                f["sequence_number"], f["window_size"] = b[off + 2], b[off + 3]
            f["negative_ack"] = bool(head & 0x02)
            f["server"] = bool(head & 0x01)
            return self._done(f, an, not head & 0x01, "segment_ack", None)
        if ptype in (6, 7):            # 20.1.8 Reject, 20.1.9 Abort: a reason, no service
            if off + 3 > end:
                an.append(A_TRUNCATED)
            else:
                code = b[off + 2]
                key = "reject_reason" if ptype == 6 else "abort_reason"
                table = BACNET_REJECT_REASONS if ptype == 6 else BACNET_ABORT_REASONS
                f[key + "_code"] = code
                f[key] = table.get(code, "proprietary" if code >= 64 else "unknown")
            kind = "reject" if ptype == 6 else "abort"
            if ptype == 7:
                f["server"] = bool(head & 0x01)
                if not head & 0x01:
                    # A client abort ends its own transaction: the peer owes nothing.
                    self.pending.pop((invoke, from_client), None)
                    return self._done(f, an, True, kind, None)
            # A reject or server abort fails its request: name it as that request's exception.
            asked = self._pair(invoke, from_client, None, f, an, True)
            if asked is not None:
                kind = BACNET_CONFIRMED_SERVICES.get(asked, "unknown")
            return self._done(f, an, False, kind + "_exception", None)
        seg = ptype == 3 and head & 0x08
        hlen = 5 if seg else 3         # 20.1.5: + sequence number, window size when segmented
        if off + hlen > end:
            an.append(A_TRUNCATED)
            return self._done(f, an, False, f["pdu_type"], None)
        svc = f["pdu_service_code"] = b[off + hlen - 1]
        name = BACNET_CONFIRMED_SERVICES.get(svc)
        if name is None:
            an.append(A_UNKNOWN_SERVICE)
        f["pdu_service"] = name or "unknown"
        kind = name or "unknown"
        body: tuple[bytes, int, int] | None = (b, off + hlen, end)
        if seg:
            body = self._segment(b, off, end, hlen, f, (invoke, from_client), svc)
        last = not f.get("more_follows")
        if ptype == 5:
            kind += "_exception"
            _error_pdu(b, off + hlen, end, f, an)
        elif body is not None and ptype == 3:
            _service(BACNET_ACK_PARSERS.get(svc), *body, f, an)
        elif ptype == 2 and off + hlen != end:
            an.append(A_LENGTH)        # 20.1.4: a SimpleACK is three octets
        self._pair(invoke, from_client, svc, f, an, last)
        identity = None
        if ptype == 3 and not routed and ("property_code" in f):
            identity = _identity(f)
        return self._done(f, an, False, kind, identity)

    def _pair(self, invoke: int, from_client: bool, svc: int | None, f: Fields, an: list[str],
              last: bool) -> int | None:
        """Find the request this response answers and give the response its object and
        property; return the request's service choice."""
        key = (invoke, not from_client)
        entry = self.pending.pop(key, None) if last else self.pending.get(key)
        if entry is None:
            an.append(A_UNSOLICITED)
            return None
        req_svc, req = entry
        if svc is not None and req_svc != svc:
            an.append(A_UNSOLICITED)
            return None
        for k in ("object_type_code", "object_type", "instance_number", "property_code",
                  "property", "array_index"):
            if k not in f and k in req:
                f[k] = req[k]
        return req_svc

    @staticmethod
    def _done(f: Fields, an: list[str], is_req: bool | None, kind: str,
              identity: dict[str, Any] | None) -> Message:
        anomalies = () if not an else tuple(dict.fromkeys(an)) if len(an) > 1 else (an[0],)
        return Message("bacnet", f, is_req, anomalies, kind, identity)

    def close(self, now: float) -> list[Message]:
        self.pending.clear()
        self.segments.clear()
        return []


class BACnetDecoder(Decoder):
    """BACnet/IP over UDP (Annex J); one BVLL message per datagram."""

    def probe(self, data: bytes) -> bool:
        n = len(data)
        if n < BACNET_BVLC_HEADER or data[0] != BACNET_BVLC_TYPE:
            return False
        func = data[1]
        if func not in BACNET_BVLC_FUNCTIONS:
            return False
        length = _H.unpack_from(data, 2)[0]
        # A probe sees at most 256 bytes of a datagram: a longer length is then plausible.
        if length != n and not (n >= BACNET_PROBE_BYTES and length > n):
            return False
        if func not in BACNET_NPDU_FUNCS:
            size = BACNET_BVLC_FIXED.get(func)
            return size is None or n - BACNET_BVLC_HEADER == size
        off = 10 if func == BACNET_FORWARDED else BACNET_BVLC_HEADER
        return n >= off + 3 and data[off] == BACNET_NPDU_VERSION and not (
            data[off + 1] & BACNET_NPDU_RESERVED)

    def session(self, limits: Limits) -> BACnetSession:
        return BACnetSession(limits)


DECODER = BACnetDecoder(name="bacnet", udp_ports=frozenset({BACNET_PORT}))
