"""CIP (Common Industrial Protocol) messages as carried by EtherNet/IP: tables and parsers.

Spec: ODVA "The CIP Networks Library, Volume 1: Common Industrial Protocol" — 2-4 Message Router
request/response format, 3-5 Connection Manager (3-5.5 services: Forward Open/Close, Unconnected
Send; 3-5.6 error codes), 5A-2 Identity object, the File object (class 0x37), Appendix A
(service codes, Multiple Service Packet), Appendix B (general status codes), Appendix C (EPATH
segments, C-6 data types);
Rockwell Automation publication 1756-PM020 (Logix tag services) and 1770-6.5.16 (DF1/PCCC
command set). Every multi-byte CIP field is little-endian; the sockaddr in a ListIdentity item is
the one big-endian exception (handled in enip.py). This module holds no state: ``enip.py`` owns
sessions, pairing and framing, and calls :func:`decode_request` / :func:`decode_response`.

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

from edge_agent.decode.cip_tables import (CIP_SERVICES, CIP_CM_SERVICES, CIP_PCCC_SERVICES,
    CIP_FILE_SERVICES, CIP_LOGIX_SERVICES, CIP_CLASSES, CIP_STATUS, CIP_EXTENDED_STATUS,
    CIP_RESET_TYPES, CIP_DATA_TYPES, CIP_DEVICE_TYPES, CIP_VENDORS, PCCC_COMMANDS,
    PCCC_FUNCTIONS)

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


CIP_RESPONSE_BIT = 0x80                # Vol 1 2-4.2: reply service = request service | 0x80
CIP_MAX_DATA = 64                      # opaque bytes kept (as hex) per record
CIP_MAX_LIST = 64                      # attribute ids / connection points kept per record
CIP_MAX_SERVICES = 64                  # Multiple Service Packet members decoded per message
CIP_MAX_DEPTH = 3                      # Unconnected Send / MSP nesting followed

CIP_CLASS_SPECIFIC_RANGE = range(0x32, 0x64)   # Appendix A: vendor (0x32-0x4A) + class specific
CLASS_IDENTITY = 0x01
CLASS_CONNECTION_MANAGER = 0x06
CLASS_FILE = 0x37
CLASS_PCCC = 0x67
SVC_GET_ATTRIBUTES_ALL = 0x01
SVC_GET_ATTRIBUTE_LIST = 0x03
SVC_SET_ATTRIBUTE_LIST = 0x04
SVC_RESET = 0x05
SVC_MULTIPLE = 0x0A
SVC_GET_ATTRIBUTE_SINGLE = 0x0E
SVC_SET_ATTRIBUTE_SINGLE = 0x10
SVC_FORWARD_CLOSE = 0x4E
SVC_UNCONNECTED_SEND = 0x52
SVC_FORWARD_OPEN = 0x54
SVC_LARGE_FORWARD_OPEN = 0x5B
FORWARD_OPENS = frozenset({SVC_FORWARD_OPEN, SVC_LARGE_FORWARD_OPEN})
SVC_EXECUTE_PCCC = 0x4B

_CLASS_SERVICES: dict[int, dict[int, str]] = {
    CLASS_CONNECTION_MANAGER: CIP_CM_SERVICES, CLASS_PCCC: CIP_PCCC_SERVICES,
    CLASS_FILE: CIP_FILE_SERVICES,
}
# A response whose request was not seen: Logix names first, then what only the CM defines.
_UNPAIRED_SERVICES = {**{k: v for k, v in CIP_CM_SERVICES.items() if k not in CIP_LOGIX_SERVICES},
                      **CIP_LOGIX_SERVICES}


CIP_STATUS_OK = frozenset({0x00, 0x06})     # partial transfer is how fragmented reads go on
CIP_STATUS_CONNECTION_FAILURE = 0x01



LOGIX_STRUCTURE = 0x02A0
# Tag services carry a Logix tag body only on a symbolic path or the symbol object; RSLogix
# uses the same codes on its own numbered objects with bodies nobody has documented.
CLASS_LOGIX_SYMBOL = 0x6B



# Rockwell 1770-6.5.16 (DF1 command set): PCCC commands, and functions of the commands that
# carry one (CMD 0x06 diagnostics, 0x0F typed/logical). Replies set bit 0x40 of the command.
PCCC_REPLY_BIT = 0x40
PCCC_FUNC_COMMANDS = frozenset({0x06, 0x07, 0x0F})
PCCC_EXTENDED_STATUS = 0xF0      # DF1 7-x: STS 0xF0 means an EXT STS byte follows the TNS

A_TRUNCATED = "cip.truncated"
A_PATH = "cip.invalid_path"
A_UNKNOWN_SERVICE = "cip.unknown_service"
A_UNKNOWN_STATUS = "cip.unknown_status"
A_LENGTH = "cip.invalid_length"
A_TOO_MANY_SERVICES = "cip.too_many_services"
A_SERVICE_MISMATCH = "cip.service_mismatch"

_H = struct.Struct("<H")
_I = struct.Struct("<I")
_HH = struct.Struct("<HH")
_REQ_HEAD = struct.Struct("<BB")
_RESP_HEAD = struct.Struct("<BBBB")
_FWD_OPEN = struct.Struct("<BBIIHHIB3xIHIHBB")          # 36 bytes, to the path size
_FWD_OPEN_LARGE = struct.Struct("<BBIIHHIB3xIIIIBB")    # 40 bytes: 32-bit network parameters
_FWD_OPEN_REPLY = struct.Struct("<IIHHIIIBB")           # 26 bytes, to the app reply
_FWD_CLOSE = struct.Struct("<BBHHIBB")                  # 12 bytes, to the path
_CONN_TRIAD_REPLY = struct.Struct("<HHIBB")             # 10 bytes: close reply / open failure
_UCS_HEAD = struct.Struct("<BBH")
_IDENTITY = struct.Struct("<HHHBBHI")                   # 14 bytes, before the product name
_PCCC_HEAD = struct.Struct("<BBH")

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


def _hex(buf: bytes, off: int, end: int) -> str:
    return buf[off:min(end, off + CIP_MAX_DATA)].hex()


# --- EPATH (Vol 1 Appendix C) --------------------------------------------------------------

_LOGICAL_KEYS = ("class_id", "instance_id", "member_id", "connection_point", "attribute_id")


def parse_epath(buf: bytes, off: int, end: int, f: Fields, an: list[str],
                text: list[str] | None = None) -> None:
    """Decode a padded EPATH into ``f`` (first class/instance/attribute, symbol, port).

    Later logical segments of a kind already seen (an application path's second class, the
    connection points of an I/O path) only go to ``text`` and ``connection_points``. Stops at
    the first segment it cannot size, with ``cip.invalid_path``.
    """
    symbol: list[str] = []
    members: list[int] = []
    while off < end:
        seg = buf[off]
        kind = seg & 0xE0
        if kind == 0x20:                                     # logical segment (C-1.4.2)
            ltype = (seg >> 2) & 7
            fmt = seg & 3
            if ltype == 5:                                   # electronic key (C-1.4.2.2)
                if seg != 0x34 or off + 10 > end or buf[off + 1] != 4:
                    an.append(A_PATH)
                    return
                vid, dtype, pcode, major, minor = struct.unpack_from("<HHHBB", buf, off + 2)
                f["key_vendor_id"], f["key_device_type_code"], f["key_product_code"] = \
                    vid, dtype, pcode
                f["key_revision"] = f"{major & 0x7F}.{minor}"
                if text is not None:
                    text.append(f"key {vid}/{dtype}/{pcode} {major & 0x7F}.{minor}")
                off += 10
                continue
            if ltype > 4 or fmt == 3:
                an.append(A_PATH)
                return
            if fmt == 0:
                if off + 2 > end:
                    break
                value = buf[off + 1]
                off += 2
            elif fmt == 1:                                   # pad byte, then 16 bits
                if off + 4 > end:
                    break
                value = _H.unpack_from(buf, off + 2)[0]
                off += 4
            else:
                if off + 6 > end:
                    break
                value = _I.unpack_from(buf, off + 2)[0]
                off += 6
            if ltype == 2 and symbol:                        # an element of the tag before
                members.append(value)
                continue
            if members:
                symbol[-1] += "[" + ",".join(map(str, members)) + "]"
                members = []
            key = _LOGICAL_KEYS[ltype]
            if ltype == 3:
                pts = f.setdefault("connection_points", [])
                if len(pts) < CIP_MAX_LIST:
                    pts.append(value)
            if key not in f:
                f[key] = value
                if ltype == 0:
                    f["class_name"] = CIP_CLASSES.get(value, "unknown")
            if text is not None:
                text.append(f"{key[:-3] if ltype != 3 else key} 0x{value:02x}")
            continue
        if members:
            symbol[-1] += "[" + ",".join(map(str, members)) + "]"
            members = []
        if kind == 0x00:                                     # port segment (C-1.4.1)
            port = seg & 0x0F
            p = off + 1
            if seg & 0x10:
                if p >= end:
                    break
                size = buf[p]
                p += 1
                if port == 0x0F:
                    if p + 2 > end:
                        break
                    port = _H.unpack_from(buf, p)[0]
                    p += 2
                if p + size > end:
                    break
                link: int | str = buf[p:p + size].decode("latin-1").rstrip("\x00")
                p += size
            else:
                if port == 0x0F:
                    if p + 2 > end:
                        break
                    port = _H.unpack_from(buf, p)[0]
                    p += 2
                if p >= end:
                    break
                link = buf[p]
                p += 1
            off = p + ((p - off) & 1)
            f.setdefault("port", port)
            f.setdefault("link_address", link)
            if text is not None:
                text.append(f"port {port} link {link}")
        elif kind == 0x60 or seg == 0x91:                    # symbolic (C-1.4.4), ANSI (C-1.4.5)
            if seg == 0x91:
                if off + 2 > end:
                    break
                size = buf[off + 1]
                start = off + 2
            else:
                size = seg & 0x1F
                start = off + 1
                if size == 0:                                # extended string formats
                    an.append(A_PATH)
                    return
            stop = start + size
            if stop > end:
                break
            name = buf[start:stop].decode("latin-1")
            symbol.append(name)
            off = stop + ((stop - off) & 1)
            if text is not None:
                text.append(f"symbol {name}")
        elif kind == 0x80:                                   # simple data segment (C-1.4.5)
            if seg != 0x80 or off + 2 > end:
                an.append(A_PATH)
                return
            off += 2 + 2 * buf[off + 1]
        elif kind == 0x40:                                   # network segment (C-1.4.3)
            if seg & 0x10:
                if off + 2 > end:
                    break
                off += 2 + 2 * buf[off + 1]
            else:
                off += 2
        else:                                                # data type or reserved
            an.append(A_PATH)
            return
    else:
        if members:
            symbol[-1] += "[" + ",".join(map(str, members)) + "]"
        if symbol:
            f["symbol"] = ".".join(symbol)
        if off > end:
            an.append(A_PATH)
        return
    an.append(A_PATH)                                        # a segment runs past the path
    if symbol:
        f["symbol"] = ".".join(symbol)


def path_text(buf: bytes, off: int, end: int, an: list[str]) -> tuple[Fields, str]:
    f: Fields = {}
    text: list[str] = []
    parse_epath(buf, off, end, f, an, text)
    return f, ", ".join(text)


# --- services ------------------------------------------------------------------------------

def _network(params: int, large: bool) -> tuple[int, str, str]:
    """Connection size, type and priority from Forward Open network parameters (3-5.5.1.1)."""
    shift = 16 if large else 0
    size = params & (0xFFFF if large else 0x1FF)
    ctype = ("null", "multicast", "point_to_point", "reserved")[(params >> (13 + shift)) & 3]
    prio = ("low", "high", "scheduled", "urgent")[(params >> (10 + shift)) & 3]
    return size, ctype, prio


def _forward_open_req(buf: bytes, off: int, end: int, f: Fields, an: list[str],
                      large: bool) -> bool:
    st = _FWD_OPEN_LARGE if large else _FWD_OPEN
    if end - off < st.size:
        an.append(A_TRUNCATED)
        return False
    (tick, ticks, ot_id, to_id, serial, vendor, oserial, mult, ot_rpi, ot_net, to_rpi, to_net,
     trigger, psize) = st.unpack_from(buf, off)
    f["priority_time_tick"], f["timeout_ticks"] = tick, ticks
    f["ot_connection_id"], f["to_connection_id"] = f"0x{ot_id:08x}", f"0x{to_id:08x}"
    f["connection_serial"] = f"0x{serial:04x}"
    f["originator_vendor_id"], f["originator_serial"] = vendor, f"0x{oserial:08x}"
    f["timeout_multiplier"] = mult
    f["ot_rpi_us"], f["to_rpi_us"] = ot_rpi, to_rpi
    f["ot_connection_size"], f["ot_connection_type"], f["ot_priority"] = _network(ot_net, large)
    f["to_connection_size"], f["to_connection_type"], f["to_priority"] = _network(to_net, large)
    f["transport_class"] = trigger & 0x0F
    f["production_trigger"] = ("cyclic", "change_of_state", "application_object")[
        (trigger >> 4) & 7] if (trigger >> 4) & 7 < 3 else "unknown"
    return _connection_path(buf, off + st.size, off + st.size + 2 * psize, end, f, an)


def _connection_path(buf: bytes, off: int, stop: int, end: int, f: Fields,
                     an: list[str]) -> bool:
    """Decode a Forward Open/Close connection path; True when it goes out through a port."""
    if stop > end:
        an.append(A_TRUNCATED)
        stop = end
    elif stop < end:
        an.append(A_LENGTH)
    pf, text = path_text(buf, off, stop, an)
    f["connection_path"] = text
    if "class_id" in pf:
        f["target_class_id"] = pf["class_id"]
        f["target_class_name"] = pf["class_name"]
    if "instance_id" in pf:
        f["target_instance_id"] = pf["instance_id"]
    if "connection_points" in pf:
        f["connection_points"] = pf["connection_points"]
    if "key_vendor_id" in pf:
        f["key_vendor_id"] = pf["key_vendor_id"]
        f["key_product_code"] = pf["key_product_code"]
    return "port" in pf


def _forward_open_resp(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    if f["status_code"] != 0:
        _triad_reply(buf, off, end, f, an, "remaining_path_size")
        return
    if end - off < _FWD_OPEN_REPLY.size:
        an.append(A_TRUNCATED)
        return
    ot_id, to_id, serial, vendor, oserial, ot_api, to_api, size, _ = \
        _FWD_OPEN_REPLY.unpack_from(buf, off)
    f["ot_connection_id"], f["to_connection_id"] = f"0x{ot_id:08x}", f"0x{to_id:08x}"
    f["connection_serial"] = f"0x{serial:04x}"
    f["originator_vendor_id"], f["originator_serial"] = vendor, f"0x{oserial:08x}"
    f["ot_api_us"], f["to_api_us"] = ot_api, to_api
    if off + _FWD_OPEN_REPLY.size + 2 * size != end:
        an.append(A_LENGTH)


def _triad_reply(buf: bytes, off: int, end: int, f: Fields, an: list[str], size_key: str) -> None:
    if end - off < _CONN_TRIAD_REPLY.size:
        if f["status_code"] == 0 or end > off:
            an.append(A_TRUNCATED)
        return
    serial, vendor, oserial, size, _ = _CONN_TRIAD_REPLY.unpack_from(buf, off)
    f["connection_serial"] = f"0x{serial:04x}"
    f["originator_vendor_id"], f["originator_serial"] = vendor, f"0x{oserial:08x}"
    f[size_key] = size


def _forward_close_req(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    if end - off < _FWD_CLOSE.size:
        an.append(A_TRUNCATED)
        return
    tick, ticks, serial, vendor, oserial, psize, _ = _FWD_CLOSE.unpack_from(buf, off)
    f["priority_time_tick"], f["timeout_ticks"] = tick, ticks
    f["connection_serial"] = f"0x{serial:04x}"
    f["originator_vendor_id"], f["originator_serial"] = vendor, f"0x{oserial:08x}"
    _connection_path(buf, off + _FWD_CLOSE.size, off + _FWD_CLOSE.size + 2 * psize, end, f, an)


def _attribute_list_req(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    if end - off < 2:
        an.append(A_TRUNCATED)
        return
    count = _H.unpack_from(buf, off)[0]
    f["attribute_count"] = count
    if f["service_code"] == SVC_GET_ATTRIBUTE_LIST:
        if off + 2 + 2 * count != end:
            an.append(A_LENGTH)
        n = min(count, (end - off - 2) // 2, CIP_MAX_LIST)
        f["attributes"] = list(struct.unpack_from(f"<{n}H", buf, off + 2))
    elif count and end - off >= 4:
        f["attributes"] = [_H.unpack_from(buf, off + 2)[0]]   # values are typed: first id only


def _logix_req(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    svc = f["service_code"]
    n = end - off
    if svc in (0x4D, 0x53):                                  # write_tag(_fragmented)
        if n < 4:
            an.append(A_TRUNCATED)
            return
        dtype = _H.unpack_from(buf, off)[0]
        f["data_type_code"] = dtype
        f["data_type"] = CIP_DATA_TYPES.get(dtype, "unknown")
        p = off + 2
        if dtype == LOGIX_STRUCTURE:
            f["structure_handle"] = _H.unpack_from(buf, p)[0]
            p += 2
        if p + 2 > end:
            an.append(A_TRUNCATED)
            return
        f["elements"] = _H.unpack_from(buf, p)[0]
        p += 2
        if svc == 0x53:
            if p + 4 > end:
                an.append(A_TRUNCATED)
                return
            f["offset"] = _I.unpack_from(buf, p)[0]
            p += 4
        f["data_length"] = end - p
        f["data"] = _hex(buf, p, end)
    elif svc in (0x4C, 0x52):                                # read_tag(_fragmented)
        want = 2 if svc == 0x4C else 6
        if n < want:
            an.append(A_TRUNCATED)
            return
        f["elements"] = _H.unpack_from(buf, off)[0]
        if svc == 0x52:
            f["offset"] = _I.unpack_from(buf, off + 2)[0]
        if n != want:
            an.append(A_LENGTH)
    elif n:
        f["data_length"] = n


def _logix_resp(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    if f["service_code"] in (0x4C, 0x52) and end - off >= 2:
        dtype = _H.unpack_from(buf, off)[0]
        f["data_type_code"] = dtype
        f["data_type"] = CIP_DATA_TYPES.get(dtype, "unknown")
        p = off + (4 if dtype == LOGIX_STRUCTURE else 2)
        f["data_length"] = max(0, end - p)
    elif end > off:
        f["data_length"] = end - off


def _pccc(buf: bytes, off: int, end: int, f: Fields, an: list[str], reply: bool) -> None:
    """Execute PCCC: requestor id (length, vendor, serial, ...) then a DF1 command."""
    if end - off < 7:
        an.append(A_TRUNCATED)
        return
    rid_len = buf[off]
    vendor, serial = struct.unpack_from("<HI", buf, off + 1)
    f["requestor_vendor_id"], f["requestor_serial"] = vendor, f"0x{serial:08x}"
    p = off + max(rid_len, 7)
    if p + 4 > end:
        an.append(A_TRUNCATED)
        return
    cmd, sts, tns = _PCCC_HEAD.unpack_from(buf, p)
    p += 4
    if reply:
        cmd &= ~PCCC_REPLY_BIT & 0xFF
    f["pccc_cmd_code"], f["pccc_status_code"], f["pccc_tns"] = cmd, sts, tns
    if cmd in PCCC_FUNC_COMMANDS and not reply:
        if p >= end:
            an.append(A_TRUNCATED)
            return
        fnc = f["pccc_fnc_code"] = buf[p]
        f["pccc_func"] = PCCC_FUNCTIONS.get((cmd, fnc), "unknown")
        p += 1
    elif not reply or cmd not in PCCC_FUNC_COMMANDS:
        f["pccc_func"] = PCCC_COMMANDS.get(cmd, "unknown")
    if reply and sts == PCCC_EXTENDED_STATUS and p < end:
        f["pccc_extended_status_code"] = buf[p]
        p += 1
    f["data_length"] = end - p


def _identity_all(buf: bytes, off: int, end: int, f: Fields) -> dict[str, Any] | None:
    """Identity attributes 1-7 as Get_Attributes_All returns them (Vol 1 5A-2.2)."""
    if end - off < _IDENTITY.size + 1:
        return None
    vid, dtype, pcode, major, minor, status, serial = _IDENTITY.unpack_from(buf, off)
    p = off + _IDENTITY.size
    size = buf[p]
    name = buf[p + 1:min(end, p + 1 + size)].decode("latin-1")
    ident = identity_fields(f, vid, dtype, pcode, major, minor, status, serial, name)
    if p + 1 + size < end:
        f["device_state"] = buf[p + 1 + size]
    return ident


def identity_fields(f: Fields, vid: int, dtype: int, pcode: int, major: int, minor: int,
                    status: int, serial: int, name: str) -> dict[str, Any]:
    """Put an identity in a record (ICSNPP cip_identity vocabulary) and return the inventory's
    view of it (IDENTITY_KEYS)."""
    vendor = CIP_VENDORS.get(vid, "unknown")
    device = CIP_DEVICE_TYPES.get(dtype, "unknown")
    revision = f"{major}.{minor}"
    serial_hex = f"0x{serial:08x}"
    f["vendor_id"], f["vendor"] = vid, vendor
    f["device_type_code"], f["device_type"] = dtype, device
    f["product_code"], f["revision"] = pcode, revision
    f["device_status"], f["serial_number"], f["product_name"] = status, serial_hex, name
    ident: dict[str, Any] = {"vendor_id": vid, "device_type": device, "product_code": pcode,
                             "firmware": revision, "serial": serial_hex, "product": name}
    if vendor != "unknown":
        ident["vendor"] = vendor
    return ident


_IDENTITY_ATTR = {1: "<H", 2: "<H", 3: "<H", 4: "<BB", 5: "<H", 6: "<I"}


def _identity_attrs(buf: bytes, off: int, end: int, f: Fields,
                    ids: list[int] | None) -> dict[str, Any] | None:
    """Identity attributes from Get_Attribute_List (ids in the reply) or _Single (``ids``)."""
    got: dict[int, Any] = {}
    p = off
    if ids is None:
        if end - p < 2:
            return None
        count = _H.unpack_from(buf, p)[0]
        p += 2
    else:
        count = 1
    for i in range(min(count, CIP_MAX_LIST)):
        if ids is None:
            if p + 4 > end:
                break
            attr, status = _HH.unpack_from(buf, p)
            p += 4
            if status:
                continue          # an attribute in error carries no value
        else:
            attr = ids[i]
        fmt = _IDENTITY_ATTR.get(attr)
        if fmt is not None:
            size = struct.calcsize(fmt)
            if p + size > end:
                break
            got[attr] = struct.unpack_from(fmt, buf, p)
            p += size
        elif attr == 7 and p < end:
            size = buf[p]
            got[7] = buf[p + 1:min(end, p + 1 + size)].decode("latin-1")
            p += 1 + size
        elif attr == 8 and p < end:
            got[8] = buf[p]
            p += 1
        else:
            break                 # a value of unknown size: nothing after it can be found
    ident: dict[str, Any] = {}
    if 1 in got:
        vid = got[1][0]
        f["vendor_id"] = ident["vendor_id"] = vid
        f["vendor"] = CIP_VENDORS.get(vid, "unknown")
        if vid in CIP_VENDORS:
            ident["vendor"] = CIP_VENDORS[vid]
    if 2 in got:
        f["device_type_code"] = got[2][0]
        f["device_type"] = ident["device_type"] = CIP_DEVICE_TYPES.get(got[2][0], "unknown")
    if 3 in got:
        f["product_code"] = ident["product_code"] = got[3][0]
    if 4 in got:
        f["revision"] = ident["firmware"] = f"{got[4][0]}.{got[4][1]}"
    if 5 in got:
        f["device_status"] = got[5][0]
    if 6 in got:
        f["serial_number"] = ident["serial"] = f"0x{got[6][0]:08x}"
    if 7 in got:
        f["product_name"] = ident["product"] = got[7]
    if 8 in got:
        f["device_state"] = got[8]
    return ident or None


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
            ctx.routed = _forward_open_req(buf, p, end, f, an, svc == SVC_LARGE_FORWARD_OPEN)
        elif svc == SVC_FORWARD_CLOSE:
            _forward_close_req(buf, p, end, f, an)
        elif end > p:
            f["data_length"] = end - p
    elif cls == CLASS_PCCC and svc == SVC_EXECUTE_PCCC:
        _pccc(buf, p, end, f, an, False)
        for k in ("pccc_cmd_code", "pccc_fnc_code", "pccc_func"):
            if k in f:
                ctx.path[k] = f[k]      # the reply has no function code of its own
    elif svc in (SVC_GET_ATTRIBUTE_LIST, SVC_SET_ATTRIBUTE_LIST):
        _attribute_list_req(buf, p, end, f, an)
    elif svc == SVC_RESET and cls == CLASS_IDENTITY and end > p:
        rtype = f["reset_type"] = buf[p]
        f["reset"] = CIP_RESET_TYPES.get(rtype, "unknown")
    elif svc in CIP_LOGIX_SERVICES and ("symbol" in f or cls == CLASS_LOGIX_SYMBOL):
        _logix_req(buf, p, end, f, an)
    elif end > p:
        f["data_length"] = end - p
        if svc in (0x02, SVC_SET_ATTRIBUTE_SINGLE, 0x19):
            f["data"] = _hex(buf, p, end)
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
                ident = _identity_all(buf, p, end, f)
            elif svc == SVC_GET_ATTRIBUTE_LIST:
                ident = _identity_attrs(buf, p, end, f, None)
            elif svc == SVC_GET_ATTRIBUTE_SINGLE and "attribute_id" in path \
                    and path.get("instance_id", 1) != 0:
                ident = _identity_attrs(buf, p, end, f, [path["attribute_id"]])
        if cls == CLASS_PCCC and svc == SVC_EXECUTE_PCCC:
            _pccc(buf, p, end, f, an, True)
        elif svc in CIP_LOGIX_SERVICES and ("symbol" in path or cls == CLASS_LOGIX_SYMBOL):
            _logix_resp(buf, p, end, f, an)
        elif end > p and "data_length" not in f:
            f["data_length"] = end - p
    if cls == CLASS_CONNECTION_MANAGER or (cls is None and svc in CIP_CM_SERVICES
                                           and svc not in CIP_LOGIX_SERVICES):
        if svc in (SVC_FORWARD_OPEN, SVC_LARGE_FORWARD_OPEN):
            f.pop("data_length", None)
            _forward_open_resp(buf, p, end, f, an)
        elif svc == SVC_FORWARD_CLOSE and cls == CLASS_CONNECTION_MANAGER:
            f.pop("data_length", None)
            _triad_reply(buf, p, end, f, an, "application_reply_size" if gs == 0
                         else "remaining_path_size")
        elif svc == SVC_UNCONNECTED_SEND and gs and end > p:
            f["remaining_path_size"] = buf[p]
    if ctx is not None and ctx.routed:
        ident = None
    out.append((f, an, _kind(f), ident))
    return out
