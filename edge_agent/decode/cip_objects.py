"""CIP service bodies of the objects the agent reads: Connection Manager, Identity, Logix, PCCC.

Spec: ODVA "The CIP Networks Library, Volume 1" 3-5.5 (Forward Open, Large Forward Open and
Forward Close, their replies and the connection triad), 5A-2 (Identity object attributes),
Appendix A (Get/Set_Attribute_List); Rockwell Automation 1756-PM020 (Logix tag services) and
1770-6.5.16 (Execute PCCC, the DF1 command set). Little-endian. Each parser fills the record
``f`` of the request or response ``cip.py`` is decoding, from ``buf[off:end]``; no state.
"""
from __future__ import annotations

import struct
from typing import Any

from edge_agent.decode.cip_path import path_text
from edge_agent.decode.cip_tables import (A_LENGTH, A_TRUNCATED, CIP_DATA_TYPES,
    CIP_DEVICE_TYPES, CIP_MAX_DATA, CIP_MAX_LIST, CIP_VENDORS, LOGIX_STRUCTURE,
    PCCC_COMMANDS, PCCC_EXTENDED_STATUS, PCCC_FUNC_COMMANDS, PCCC_FUNCTIONS, PCCC_REPLY_BIT,
    SVC_GET_ATTRIBUTE_LIST)

Fields = dict[str, Any]

_H = struct.Struct("<H")
_I = struct.Struct("<I")
_HH = struct.Struct("<HH")
_FWD_OPEN = struct.Struct("<BBIIHHIB3xIHIHBB")          # 36 bytes, to the path size
_FWD_OPEN_LARGE = struct.Struct("<BBIIHHIB3xIIIIBB")    # 40 bytes: 32-bit network parameters
_FWD_OPEN_REPLY = struct.Struct("<IIHHIIIBB")           # 26 bytes, to the app reply
_FWD_CLOSE = struct.Struct("<BBHHIBB")                  # 12 bytes, to the path
_CONN_TRIAD_REPLY = struct.Struct("<HHIBB")             # 10 bytes: close reply / open failure
IDENTITY = struct.Struct("<HHHBBHI")                    # 14 bytes, before the product name
_PCCC_HEAD = struct.Struct("<BBH")


def data_hex(buf: bytes, off: int, end: int) -> str:
    return buf[off:min(end, off + CIP_MAX_DATA)].hex()


def _network(params: int, large: bool) -> tuple[int, str, str]:
    """Connection size, type and priority from Forward Open network parameters (3-5.5.1.1)."""
    shift = 16 if large else 0
    size = params & (0xFFFF if large else 0x1FF)
    ctype = ("null", "multicast", "point_to_point", "reserved")[(params >> (13 + shift)) & 3]
    prio = ("low", "high", "scheduled", "urgent")[(params >> (10 + shift)) & 3]
    return size, ctype, prio


def forward_open_req(buf: bytes, off: int, end: int, f: Fields, an: list[str],
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


def forward_open_resp(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    if f["status_code"] != 0:
        triad_reply(buf, off, end, f, an, "remaining_path_size")
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


def triad_reply(buf: bytes, off: int, end: int, f: Fields, an: list[str], size_key: str) -> None:
    if end - off < _CONN_TRIAD_REPLY.size:
        if f["status_code"] == 0 or end > off:
            an.append(A_TRUNCATED)
        return
    serial, vendor, oserial, size, _ = _CONN_TRIAD_REPLY.unpack_from(buf, off)
    f["connection_serial"] = f"0x{serial:04x}"
    f["originator_vendor_id"], f["originator_serial"] = vendor, f"0x{oserial:08x}"
    f[size_key] = size


def forward_close_req(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    if end - off < _FWD_CLOSE.size:
        an.append(A_TRUNCATED)
        return
    tick, ticks, serial, vendor, oserial, psize, _ = _FWD_CLOSE.unpack_from(buf, off)
    f["priority_time_tick"], f["timeout_ticks"] = tick, ticks
    f["connection_serial"] = f"0x{serial:04x}"
    f["originator_vendor_id"], f["originator_serial"] = vendor, f"0x{oserial:08x}"
    _connection_path(buf, off + _FWD_CLOSE.size, off + _FWD_CLOSE.size + 2 * psize, end, f, an)


def attribute_list_req(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
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


def logix_req(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
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
        f["data"] = data_hex(buf, p, end)
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


def logix_resp(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    if f["service_code"] in (0x4C, 0x52) and end - off >= 2:
        dtype = _H.unpack_from(buf, off)[0]
        f["data_type_code"] = dtype
        f["data_type"] = CIP_DATA_TYPES.get(dtype, "unknown")
        p = off + (4 if dtype == LOGIX_STRUCTURE else 2)
        f["data_length"] = max(0, end - p)
    elif end > off:
        f["data_length"] = end - off


def pccc(buf: bytes, off: int, end: int, f: Fields, an: list[str], reply: bool) -> None:
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


def identity_all(buf: bytes, off: int, end: int, f: Fields) -> dict[str, Any] | None:
    """Identity attributes 1-7 as Get_Attributes_All returns them (Vol 1 5A-2.2)."""
    if end - off < IDENTITY.size + 1:
        return None
    vid, dtype, pcode, major, minor, status, serial = IDENTITY.unpack_from(buf, off)
    p = off + IDENTITY.size
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


def identity_attrs(buf: bytes, off: int, end: int, f: Fields,
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
