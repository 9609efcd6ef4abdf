"""CIP (Common Industrial Protocol) messages as carried by EtherNet/IP: the Message Router.

Spec: ODVA "The CIP Networks Library, Volume 1: Common Industrial Protocol" — 2-4 Message Router
request/response format, 3-5 Connection Manager (3-5.5 services: Forward Open/Close, Unconnected
Send; 3-5.6 error codes), 5A-2 Identity object, the File object (class 0x37), Appendix A
(service codes, Multiple Service Packet), Appendix B (general status codes), Appendix C (EPATH
segments, C-6 data types);
Rockwell Automation publication 1756-PM020 (Logix tag services) and 1770-6.5.16 (DF1/PCCC
command set). Every multi-byte CIP field is little-endian; the sockaddr in a ListIdentity item is
the one big-endian exception (handled in enip.py). This module holds no state: ``enip.py`` owns
sessions, pairing and framing, and calls :func:`decode_request` / :func:`decode_response`.
The EPATH is read by ``cip_path.py``, the bodies of the Connection Manager, Identity, Logix and
PCCC services by ``cip_objects.py``; the names, codes and bounds are in ``cip_tables.py``.

A CIP record carries ``service_code, service`` (bit 7, the response bit, is never included),
the request path (``class_id, class_name, instance_id, attribute_id, member_id,
connection_point, symbol``), responses add ``status_code, status`` and, when present,
``extended_status_code`` (+ ``extended_status`` for connection-failure codes). Responses carry
no path: they take it from their request (see :class:`Ctx`).

Anomalies (all ``cip.``): ``truncated``, ``invalid_path``, ``unknown_service`` (an unnamed code
in the common or reserved ranges; vendor and class specific codes 0x32-0x63 are legitimately
unnamed), ``unknown_status``, ``invalid_length`` (a service body that disagrees with its counts
or offsets), ``too_many_services``, ``service_mismatch``.
"""
from __future__ import annotations

import struct
from typing import Any

import dpkt

from edge_agent.decode.cip_objects import (attribute_list_req, data_hex, forward_close_req,
    forward_open_req, forward_open_resp, identity_all, identity_attrs, logix_req, logix_resp,
    pccc, triad_reply)
from edge_agent.decode.cip_path import parse_epath, path_text
from edge_agent.decode.cip_tables import (CIP_SERVICES, CIP_CM_SERVICES, CIP_PCCC_SERVICES,
    CIP_FILE_SERVICES, CIP_LOGIX_SERVICES, CIP_CLASSES, CIP_STATUS, CIP_EXTENDED_STATUS,
    CIP_RESET_TYPES, CIP_VENDORS, CIP_MAX_LIST, CIP_MAX_SERVICES, CIP_MAX_DEPTH,
    CIP_CLASS_SPECIFIC_RANGE, CLASS_IDENTITY, CLASS_CONNECTION_MANAGER, CLASS_FILE, CLASS_PCCC,
    CLASS_LOGIX_SYMBOL, SVC_GET_ATTRIBUTES_ALL, SVC_GET_ATTRIBUTE_LIST, SVC_SET_ATTRIBUTE_LIST,
    SVC_RESET, SVC_MULTIPLE, SVC_GET_ATTRIBUTE_SINGLE, SVC_SET_ATTRIBUTE_SINGLE,
    SVC_FORWARD_CLOSE, SVC_UNCONNECTED_SEND, SVC_FORWARD_OPEN, SVC_LARGE_FORWARD_OPEN,
    SVC_EXECUTE_PCCC, CIP_STATUS_OK, CIP_STATUS_CONNECTION_FAILURE, A_TRUNCATED, A_PATH,
    A_UNKNOWN_SERVICE, A_UNKNOWN_STATUS, A_LENGTH, A_TOO_MANY_SERVICES, A_SERVICE_MISMATCH)
# Taken from here by enip.py and the tests.
from edge_agent.decode.cip_objects import IDENTITY as _IDENTITY, identity_fields  # noqa: F401
from edge_agent.decode.cip_tables import (CIP_DATA_TYPES, CIP_DEVICE_TYPES,  # noqa: F401
    CIP_RESPONSE_BIT, FORWARD_OPENS, PCCC_COMMANDS, PCCC_FUNCTIONS)

Fields = dict[str, Any]
# One decoded CIP message: fields, anomalies, kind, identity of the sender (or None).
Rec = tuple[Fields, list[str], str, "dict[str, Any] | None"]


class CIPRequest(dpkt.Packet):
    """Message Router request header (Vol 1 2-4.1); the padded EPATH and data follow."""

    __byte_order__ = "<"
    __hdr__ = (
        ("service", "B", 0),
        ("path_size", "B", 0),      # in 16-bit words
    )


class CIPResponse(dpkt.Packet):
    """Message Router response header (Vol 1 2-4.2); additional status words and data follow."""

    __byte_order__ = "<"
    __hdr__ = (
        ("service", "B", 0x80),     # request service | 0x80
        ("reserved", "B", 0),
        ("general_status", "B", 0),
        ("additional_status_size", "B", 0),   # in 16-bit words
    )


class ForwardOpen(dpkt.Packet):
    """Forward Open request body up to the connection path size (Vol 1 3-5.5.2)."""

    __byte_order__ = "<"
    __hdr__ = (
        ("priority_time_tick", "B", 0x0A),
        ("timeout_ticks", "B", 0x0E),
        ("ot_connection_id", "I", 0),
        ("to_connection_id", "I", 0),
        ("connection_serial", "H", 0),
        ("originator_vendor_id", "H", 0),
        ("originator_serial", "I", 0),
        ("timeout_multiplier", "B", 0),
        ("reserved", "3s", b"\x00\x00\x00"),
        ("ot_rpi", "I", 0),
        ("ot_network_parameters", "H", 0),
        ("to_rpi", "I", 0),
        ("to_network_parameters", "H", 0),
        ("transport_type_trigger", "B", 0xA3),
        ("connection_path_size", "B", 0),
    )


_CLASS_SERVICES: dict[int, dict[int, str]] = {
    CLASS_CONNECTION_MANAGER: CIP_CM_SERVICES, CLASS_PCCC: CIP_PCCC_SERVICES,
    CLASS_FILE: CIP_FILE_SERVICES,
}
# A response whose request was not seen: Logix names first, then what only the CM defines.
_UNPAIRED_SERVICES = {**{k: v for k, v in CIP_CM_SERVICES.items() if k not in CIP_LOGIX_SERVICES},
                      **CIP_LOGIX_SERVICES}

_H = struct.Struct("<H")
_REQ_HEAD = struct.Struct("<BB")
_RESP_HEAD = struct.Struct("<BBBB")
_UCS_HEAD = struct.Struct("<BBH")

# Fields a response takes from its request: the request path (responses carry none).
CONTEXT_KEYS = ("class_id", "class_name", "instance_id", "attribute_id", "member_id",
                "connection_point", "symbol")


class Ctx:
    """What a request leaves for its response: service, path, and the nested requests."""

    __slots__ = ("service", "path", "children", "inner", "routed")

    def __init__(self, service: int, path: Fields, children: "list[Ctx] | None" = None,
                 inner: "Ctx | None" = None) -> None:
        self.service = service
        self.path = path
        self.children = children          # Multiple Service Packet members, in order
        self.inner = inner                # the request an Unconnected Send carries
        # Addressed through a port (a backplane slot, another network): the reply speaks for
        # a module behind the device that sends it, so it says nothing of the sender itself.
        self.routed = False


def _mark_routed(ctx: Ctx, route: str) -> None:
    ctx.routed = True
    ctx.path["route_path"] = route
    for child in ctx.children or ():
        _mark_routed(child, route)


def vendor_name(vendor_id: int) -> str:
    return CIP_VENDORS.get(vendor_id, "unknown")


def class_name(class_id: int) -> str:
    return CIP_CLASSES.get(class_id, "unknown")


def service_name(code: int, class_id: int | None) -> tuple[str, bool]:
    """Name of a request service code in the context of its class; False when unnamed."""
    name = CIP_SERVICES.get(code)
    if name is not None:
        return name, True
    if class_id is None:
        name = _UNPAIRED_SERVICES.get(code)
    else:
        name = _CLASS_SERVICES.get(class_id, CIP_LOGIX_SERVICES).get(code)
    if name is not None:
        return name, True
    return "unknown", code in CIP_CLASS_SPECIFIC_RANGE


# --- requests and responses ----------------------------------------------------------------

def _kind(f: Fields) -> str:
    return f["service"] if f.get("status_code", 0) in CIP_STATUS_OK else f["service"] + "_exception"


def decode_request(buf: bytes, off: int, end: int, depth: int = 0) -> tuple[list[Rec], Ctx | None]:
    """One Message Router request (and what it embeds) from ``buf[off:end]``."""
    an: list[str] = []
    if end - off < 2:
        f: Fields = {"service_code": buf[off] & 0x7F} if end > off else {}
        if f:
            f["service"] = service_name(f["service_code"], None)[0]
        return [(f, [A_TRUNCATED], f.get("service", ""), None)], None
    svc, words = _REQ_HEAD.unpack_from(buf, off)
    svc &= 0x7F
    f = {"service_code": svc, "service": ""}
    p = off + 2
    path_end = p + 2 * words
    if path_end > end:
        an.append(A_TRUNCATED)
        path_end = end
    parse_epath(buf, p, path_end, f, an)
    cls = f.get("class_id")
    name, known = service_name(svc, cls)
    f["service"] = name
    if not known:
        an.append(A_UNKNOWN_SERVICE)
    p = path_end
    ctx = Ctx(svc, {k: f[k] for k in CONTEXT_KEYS if k in f})
    out: list[Rec] = []
    if svc == SVC_MULTIPLE:
        out.append((f, an, name, None))
        ctx.children = []
        _multiple(buf, p, end, f, an, out, None, ctx.children, depth)
        return out, ctx
    if cls == CLASS_CONNECTION_MANAGER and svc == SVC_UNCONNECTED_SEND and depth < CIP_MAX_DEPTH:
        return _unconnected_send(buf, p, end, f, an, ctx, depth)
    if svc in (SVC_GET_ATTRIBUTE_SINGLE, SVC_SET_ATTRIBUTE_SINGLE) and "attribute_id" not in f \
            and "symbol" not in f:
        an.append(A_PATH)
    if cls == CLASS_CONNECTION_MANAGER:
        if svc in (SVC_FORWARD_OPEN, SVC_LARGE_FORWARD_OPEN):
            ctx.routed = forward_open_req(buf, p, end, f, an, svc == SVC_LARGE_FORWARD_OPEN)
        elif svc == SVC_FORWARD_CLOSE:
            forward_close_req(buf, p, end, f, an)
        elif end > p:
            f["data_length"] = end - p
    elif cls == CLASS_PCCC and svc == SVC_EXECUTE_PCCC:
        pccc(buf, p, end, f, an, False)
        for k in ("pccc_cmd_code", "pccc_fnc_code", "pccc_func"):
            if k in f:
                ctx.path[k] = f[k]      # the reply has no function code of its own
    elif svc in (SVC_GET_ATTRIBUTE_LIST, SVC_SET_ATTRIBUTE_LIST):
        attribute_list_req(buf, p, end, f, an)
    elif svc == SVC_RESET and cls == CLASS_IDENTITY and end > p:
        rtype = f["reset_type"] = buf[p]
        f["reset"] = CIP_RESET_TYPES.get(rtype, "unknown")
    elif svc in CIP_LOGIX_SERVICES and ("symbol" in f or cls == CLASS_LOGIX_SYMBOL):
        logix_req(buf, p, end, f, an)
    elif end > p:
        f["data_length"] = end - p
        if svc in (0x02, SVC_SET_ATTRIBUTE_SINGLE, 0x19):
            f["data"] = data_hex(buf, p, end)
    out.append((f, an, name, None))
    return out, ctx


def _unconnected_send(buf: bytes, p: int, end: int, f: Fields, an: list[str], ctx: Ctx,
                      depth: int) -> tuple[list[Rec], Ctx]:
    """Unwrap Unconnected Send (3-5.5.4): the embedded request is what the record shows."""
    if end - p < 4:
        an.append(A_TRUNCATED)
        return [(f, an, f["service"], None)], ctx
    tick, ticks, size = _UCS_HEAD.unpack_from(buf, p)
    inner_off = p + 4
    inner_end = inner_off + size
    if inner_end > end or size < 2:
        an.append(A_LENGTH)
        return [(f, an, f["service"], None)], ctx
    recs, inner = decode_request(buf, inner_off, inner_end, depth + 1)
    route_off = inner_end + (size & 1)                       # pad byte after an odd message
    wrap: Fields = {"unconnected_send": True, "priority_time_tick": tick,
                    "timeout_ticks": ticks}
    if route_off + 2 <= end:
        words = buf[route_off]
        route_end = route_off + 2 + 2 * words
        if route_end != end:
            an.append(A_LENGTH)
        _, text = path_text(buf, route_off + 2, min(route_end, end), an)
        wrap["route_path"] = text
        if inner is not None:
            _mark_routed(inner, text)
    else:
        an.append(A_TRUNCATED)
    first = recs[0]
    first[0].update(wrap)
    first[1].extend(an)
    ctx.inner = inner
    return recs, ctx


def _multiple(buf: bytes, p: int, end: int, f: Fields, an: list[str], out: list[Rec],
              ctxs: list[Ctx] | None, children: list[Ctx] | None, depth: int) -> None:
    """Members of a Multiple Service Packet (Appendix A): a count, offsets from the count, then
    the members.

    Requests fill ``children`` with each member's context; responses read ``ctxs``.
    """
    if end - p < 2:
        an.append(A_TRUNCATED)
        return
    count = _H.unpack_from(buf, p)[0]
    f["service_count"] = count
    if p + 2 + 2 * count > end:
        an.append(A_LENGTH)
        count = (end - p - 2) // 2
    if count > CIP_MAX_SERVICES:
        an.append(A_TOO_MANY_SERVICES)
        count = CIP_MAX_SERVICES
    if depth >= CIP_MAX_DEPTH:
        return
    offsets = struct.unpack_from(f"<{count}H", buf, p + 2)
    first = p + 2 + 2 * count
    for i, rel in enumerate(offsets):
        start = p + rel
        stop = p + offsets[i + 1] if i + 1 < count else end
        if not start < stop <= end:
            stop = end                     # a bad next offset: this member runs to the end
            if i + 1 < count:
                an.append(A_LENGTH)
        if not first <= start < stop:
            an.append(A_LENGTH)
            if children is not None:
                children.append(Ctx(-1, {}))
            continue
        if ctxs is None:
            recs, ctx = decode_request(buf, start, stop, depth + 1)
            if children is not None:
                children.append(ctx or Ctx(-1, {}))
        else:
            recs = decode_response(buf, start, stop, ctxs[i] if i < len(ctxs) else None,
                                   depth + 1)
        for rec in recs:
            rec[0]["msp_index"] = i
        out.extend(recs)


def decode_response(buf: bytes, off: int, end: int, ctx: Ctx | None,
                    depth: int = 0) -> list[Rec]:
    """One Message Router response; ``ctx`` is its request's, or None when it was not seen."""
    an: list[str] = []
    if end - off < 4:
        f: Fields = {}
        if end > off:
            f["service_code"] = svc = buf[off] & 0x7F
            f["service"] = service_name(svc, ctx.path.get("class_id") if ctx else None)[0]
        if end - off >= 3:
            f["status_code"] = buf[off + 2]
            f["status"] = CIP_STATUS.get(buf[off + 2], "unknown")
        return [(f, [A_TRUNCATED], f.get("service", ""), None)]
    svc, _, gs, words = _RESP_HEAD.unpack_from(buf, off)
    svc &= 0x7F
    if ctx is not None and ctx.service != svc:
        if ctx.inner is not None and ctx.inner.service == svc:
            ctx = ctx.inner                # Unconnected Send delivered: the target's reply
        elif ctx.service >= 0:
            an.append(A_SERVICE_MISMATCH)
            ctx = None
        else:
            ctx = None
    path = ctx.path if ctx is not None else {}
    cls = path.get("class_id")
    name, known = service_name(svc, cls)
    if not known:
        an.append(A_UNKNOWN_SERVICE)
    f = {"service_code": svc, "service": name, "status_code": gs,
         "status": CIP_STATUS.get(gs, "unknown")}
    if gs not in CIP_STATUS:
        an.append(A_UNKNOWN_STATUS)
    p = off + 4
    if words:
        if p + 2 * words > end:
            an.append(A_TRUNCATED)
            words = (end - p) // 2
        if words:
            ext = f["extended_status_code"] = _H.unpack_from(buf, p)[0]
            if gs == CIP_STATUS_CONNECTION_FAILURE:
                f["extended_status"] = CIP_EXTENDED_STATUS.get(ext, "unknown")
            if words > 1:
                f["additional_status"] = list(struct.unpack_from(
                    f"<{min(words - 1, CIP_MAX_LIST)}H", buf, p + 2))
        p += 2 * words
    f.update(path)
    ident: dict[str, Any] | None = None
    out: list[Rec] = []
    if svc == SVC_MULTIPLE:
        out.append((f, an, _kind(f), None))
        if gs in CIP_STATUS_OK or gs == 0x1E:
            _multiple(buf, p, end, f, an, out, ctx.children if ctx and ctx.children else [],
                      None, depth)
        return out
    if gs in CIP_STATUS_OK:
        if cls == CLASS_IDENTITY:
            if svc == SVC_GET_ATTRIBUTES_ALL and path.get("instance_id", 1) != 0:
                ident = identity_all(buf, p, end, f)
            elif svc == SVC_GET_ATTRIBUTE_LIST:
                ident = identity_attrs(buf, p, end, f, None)
            elif svc == SVC_GET_ATTRIBUTE_SINGLE and "attribute_id" in path \
                    and path.get("instance_id", 1) != 0:
                ident = identity_attrs(buf, p, end, f, [path["attribute_id"]])
        if cls == CLASS_PCCC and svc == SVC_EXECUTE_PCCC:
            pccc(buf, p, end, f, an, True)
        elif svc in CIP_LOGIX_SERVICES and ("symbol" in path or cls == CLASS_LOGIX_SYMBOL):
            logix_resp(buf, p, end, f, an)
        elif end > p and "data_length" not in f:
            f["data_length"] = end - p
    if cls == CLASS_CONNECTION_MANAGER or (cls is None and svc in CIP_CM_SERVICES
                                           and svc not in CIP_LOGIX_SERVICES):
        if svc in (SVC_FORWARD_OPEN, SVC_LARGE_FORWARD_OPEN):
            f.pop("data_length", None)
            forward_open_resp(buf, p, end, f, an)
        elif svc == SVC_FORWARD_CLOSE and cls == CLASS_CONNECTION_MANAGER:
            f.pop("data_length", None)
            triad_reply(buf, p, end, f, an, "application_reply_size" if gs == 0
                        else "remaining_path_size")
        elif svc == SVC_UNCONNECTED_SEND and gs and end > p:
            f["remaining_path_size"] = buf[p]
    if ctx is not None and ctx.routed:
        ident = None
    out.append((f, an, _kind(f), ident))
    return out
