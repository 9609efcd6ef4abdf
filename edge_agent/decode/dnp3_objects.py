"""DNP3 application objects: object headers, qualifiers, the object library and point values.

Spec: IEEE Std 1815-2012, clause 4 (object headers: group, variation, qualifier with object
prefix code and range specifier code) and Annex A (the object library: every group and
variation, its size and field layout); clause 7 and A.45 for the secure authentication objects
(group 120). Every multi-byte field is little-endian; DNP3 time is a 48-bit count of
milliseconds since 1970-01-01 UTC.

Used by :mod:`edge_agent.decode.dnp3`; this module holds no per-flow state. The names and sizes
of the object library are in :mod:`edge_agent.decode.dnp3_tables`. Point values are decoded for
the first ``DNP3_MAX_POINTS`` objects of each header; the rest are skipped by size. Flag octets
are emitted raw as ``flags``: bit 0 online, 1 restart, 2 comm_lost, 3 remote_forced, 4
local_forced, bits 5-6 per group (chatter_filter, rollover/discontinuity, over_range/
reference_err), bit 7 the state of binaries.
"""
from __future__ import annotations

import math
import struct
from typing import Any, Callable

from edge_agent.decode.dnp3_tables import (DNP3_ATTRIBUTE_TYPES, DNP3_AUTH_ERRORS,
    DNP3_CONTROL_STATUS, DNP3_DATA_REQUESTS, DNP3_FILE_MODES, DNP3_FILE_STATUS, DNP3_FILE_TYPES,
    DNP3_IDENTITY_ATTRIBUTES, DNP3_KEY_STATUS, DNP3_OBJECT_NAMES, DNP3_OBJECT_SIZES,
    DNP3_OP_TYPES, DNP3_PACKED_BITS, DNP3_PREFIX_WIDTH, DNP3_RANGE_CODES, DNP3_STRING_GROUPS,
    DNP3_TCC, DNP3_USER_OPERATIONS)

DNP3_MAX_POINTS = 32          # point values kept per object header
DNP3_MAX_TEXT = 64            # characters kept of a file name, octet string or attribute

A_UNKNOWN_OBJECT = "dnp3.unknown_object"
A_TRUNCATED_OBJECT = "dnp3.truncated_object"
A_INVALID_QUALIFIER = "dnp3.invalid_qualifier"

# Readers of the clause 4 prefix (by octets) and range fields (by octets and fields).
_PREFIX = {1: struct.Struct("<B").unpack_from, 2: struct.Struct("<H").unpack_from,
           4: struct.Struct("<I").unpack_from}
_RANGE = {(1, 2): struct.Struct("<BB").unpack_from, (2, 2): struct.Struct("<HH").unpack_from,
          (4, 2): struct.Struct("<II").unpack_from, (1, 1): struct.Struct("<B").unpack_from,
          (2, 1): struct.Struct("<H").unpack_from, (4, 1): struct.Struct("<I").unpack_from}

Point = dict[str, Any]
FixedDecoder = Callable[[bytes, int, int], Point]     # buffer, offset, point index
VarDecoder = Callable[[bytes, int, int, list[str]], Point]


_F, _CV, _V, _T = ("flags",), ("count",), ("value",), ("timestamp",)


def _finite(x: float) -> float | str:
    """JSON has no NaN or infinity; a device can still send them."""
    return x if math.isfinite(x) else str(x)


def _fields(fmt: str, keys: tuple[str, ...]) -> FixedDecoder:
    """A decoder for a fixed layout; "T" in ``fmt`` is a 48-bit DNP3 time (read as I + H)."""
    unpack = struct.Struct("<" + fmt.replace("T", "IH")).unpack_from
    ikeys = ("index",) + keys
    vi = keys.index("value") + 1 if "value" in keys and ("f" in fmt or "d" in fmt) else 0
    ti = fmt.find("T")
    if ti < 0 and not vi:
        return lambda b, o, i: dict(zip(ikeys, (i,) + unpack(b, o)))

    def dec(b: bytes, o: int, i: int) -> Point:
        v = unpack(b, o)
        if ti >= 0:
            v = v[:ti] + (v[ti] | v[ti + 1] << 32,) + v[ti + 2:]
        d = dict(zip(ikeys, (i,) + v))
        if vi:
            d["value"] = _finite(d["value"])
        return d
    return dec


_TIME = struct.Struct("<IH").unpack_from
_REL = struct.Struct("<H").unpack_from


def _binary(shift: int, time: str = "") -> FixedDecoder:
    """Flag octet whose top bit(s) are the state: binaries (shift 7), double-bit (shift 6)."""
    if not time:
        return lambda b, o, i: {"index": i, "flags": b[o], "state": b[o] >> shift}
    if time == "H":
        return lambda b, o, i: {"index": i, "flags": b[o], "state": b[o] >> shift,
                                "relative_time_ms": _REL(b, o + 1)[0]}

    def dec(b: bytes, o: int, i: int) -> Point:
        lo, hi = _TIME(b, o + 1)
        return {"index": i, "flags": b[o], "state": b[o] >> shift, "timestamp": lo | hi << 32}
    return dec


def _command_status(time: bool) -> FixedDecoder:
    if not time:
        return lambda b, o, i: {"index": i, "status_code": b[o] & 0x7F,
                                "commanded_state": b[o] >> 7}

    def dec(b: bytes, o: int, i: int) -> Point:
        lo, hi = _TIME(b, o + 1)
        return {"index": i, "status_code": b[o] & 0x7F, "commanded_state": b[o] >> 7,
                "timestamp": lo | hi << 32}
    return dec


_CROB = struct.Struct("<BBIIB").unpack_from


def _crob(b: bytes, o: int, i: int) -> Point:
    code, count, on, off, status = _CROB(b, o)
    op = code & 0x0F
    st = status & 0x7F
    return {"index": i, "control_code": code,
            "operation_type": DNP3_OP_TYPES[op] if op < 5 else "unknown",
            "trip_control_code": DNP3_TCC[code >> 6], "queue": bool(code & 0x10),
            "clear_bit": bool(code & 0x20), "execute_count": count, "on_time": on,
            "off_time": off, "status_code": st,
            "status": DNP3_CONTROL_STATUS.get(st, "unknown")}


def _aob(fmt: str) -> FixedDecoder:
    """A.24 analog output block: value then control status."""
    unpack = struct.Struct("<" + fmt + "B").unpack_from
    floaty = fmt in "fd"

    def dec(b: bytes, o: int, i: int) -> Point:
        v, st = unpack(b, o)
        st &= 0x7F
        return {"index": i, "value": _finite(v) if floaty else v, "status_code": st,
                "status": DNP3_CONTROL_STATUS.get(st, "unknown")}
    return dec


def _aoce(fmt: str) -> FixedDecoder:
    """A.26 analog output command event: control status, value, optional time."""
    inner = _fields("B" + fmt, ("status_code", "value") + (_T if "T" in fmt else ()))

    def dec(b: bytes, o: int, i: int) -> Point:
        d = inner(b, o, i)
        st = d["status_code"] = d["status_code"] & 0x7F
        d["status"] = DNP3_CONTROL_STATUS.get(st, "unknown")
        return d
    return dec


def _bcd(fmt: str) -> FixedDecoder:
    unpack = struct.Struct("<" + fmt).unpack_from
    return lambda b, o, i: {"index": i, "value": format(unpack(b, o)[0], "x")}


DNP3_FIXED_DECODERS: dict[tuple[int, int], FixedDecoder] = {
    (1, 2): _binary(7), (2, 1): _binary(7), (2, 2): _binary(7, "T"), (2, 3): _binary(7, "H"),
    (3, 2): _binary(6), (4, 1): _binary(6), (4, 2): _binary(6, "T"), (4, 3): _binary(6, "H"),
    (10, 2): _binary(7), (11, 1): _binary(7), (11, 2): _binary(7, "T"),
    (12, 1): _crob, (12, 2): _crob,
    (13, 1): _command_status(False), (13, 2): _command_status(True),
    **{(g, v): _fields(fmt, keys) for g, table in (
        (20, (("BI", _F + _CV), ("BH", _F + _CV), ("BI", _F + _CV), ("BH", _F + _CV),
              ("I", _CV), ("H", _CV), ("I", _CV), ("H", _CV))),
        (21, (("BI", _F + _CV), ("BH", _F + _CV), ("BI", _F + _CV), ("BH", _F + _CV),
              ("BIT", _F + _CV + _T), ("BHT", _F + _CV + _T), ("BIT", _F + _CV + _T),
              ("BHT", _F + _CV + _T), ("I", _CV), ("H", _CV), ("I", _CV), ("H", _CV))),
        (22, (("BI", _F + _CV), ("BH", _F + _CV), ("BI", _F + _CV), ("BH", _F + _CV),
              ("BIT", _F + _CV + _T), ("BHT", _F + _CV + _T), ("BIT", _F + _CV + _T),
              ("BHT", _F + _CV + _T))),
        (30, (("Bi", _F + _V), ("Bh", _F + _V), ("i", _V), ("h", _V), ("Bf", _F + _V),
              ("Bd", _F + _V))),
        (31, (("Bi", _F + _V), ("Bh", _F + _V), ("BiT", _F + _V + _T), ("BhT", _F + _V + _T),
              ("i", _V), ("h", _V), ("Bf", _F + _V), ("Bd", _F + _V))),
        (32, (("Bi", _F + _V), ("Bh", _F + _V), ("BiT", _F + _V + _T), ("BhT", _F + _V + _T),
              ("Bf", _F + _V), ("Bd", _F + _V), ("BfT", _F + _V + _T), ("BdT", _F + _V + _T))),
        (34, (("H", _V), ("I", _V), ("f", _V))),
        (40, (("Bi", _F + _V), ("Bh", _F + _V), ("Bf", _F + _V), ("Bd", _F + _V))),
        (50, (("T", _T), ("TI", _T + ("interval",)), ("T", _T),
              ("TIB", _T + ("interval_count", "interval_units")))),
        (51, (("T", _T), ("T", _T))),
        (52, (("H", ("delay_secs",)), ("H", ("delay_ms",)))),
        (102, (("B", _V),)),
        (120, (("", ()), ("", ()), ("IH", ("csq", "user_number")), ("H", ("user_number",)))),
        (121, (("BHI", _F + ("association_id", "count")),)),
        (122, (("BHI", _F + ("association_id", "count")),
               ("BHIT", _F + ("association_id", "count") + _T))),
    ) for v, (fmt, keys) in enumerate(table, 1) if fmt},
    **{(g, v): _aob(fmt) for g in (41,) for v, fmt in enumerate("ihfd", 1)},
    **{(g, v): _aoce(fmt) for g in (43,)
       for v, fmt in enumerate(("i", "h", "iT", "hT", "f", "d", "fT", "dT"), 1)},
    **{(101, v): _bcd(fmt) for v, fmt in enumerate("HIQ", 1)},
}
for _v in range(1, 9):   # frozen counter events, analog events: layouts of their siblings
    DNP3_FIXED_DECODERS[(23, _v)] = DNP3_FIXED_DECODERS[(22, _v)]
    DNP3_FIXED_DECODERS[(33, _v)] = DNP3_FIXED_DECODERS[(32, _v)]
    DNP3_FIXED_DECODERS[(42, _v)] = DNP3_FIXED_DECODERS[(32, _v)]


def _text(b: bytes, start: int, stop: int) -> str:
    return b[start:min(stop, start + DNP3_MAX_TEXT)].decode("utf-8", "replace").rstrip("\0")


def _octets(b: bytes, o: int, n: int, an: list[str]) -> Point:
    return {"value": b[o:o + min(n, DNP3_MAX_TEXT)].hex(), "size": n}


_G70V2 = struct.Struct("<HHHHI").unpack_from
_G70V3 = struct.Struct("<HHIHHIIHHH").unpack_from
_G70V4 = struct.Struct("<IIHHB").unpack_from
_G70V5 = struct.Struct("<II").unpack_from
_G70V6 = struct.Struct("<IIB").unpack_from
_G70V7 = struct.Struct("<HHHIIHHH").unpack_from


def _short(n: int, want: int, an: list[str]) -> bool:
    if n < want:
        an.append(A_TRUNCATED_OBJECT)
        return True
    return False


def _name_at(b: bytes, o: int, n: int, name_off: int, name_size: int, an: list[str]) -> str:
    """A file or user name given by offset and size from the start of the object."""
    if name_off + name_size > n:
        an.append(A_TRUNCATED_OBJECT)
    return _text(b, o + name_off, o + min(n, name_off + name_size))


def _g70v2(b: bytes, o: int, n: int, an: list[str]) -> Point:
    # The password is deliberately not copied into records.
    if _short(n, 12, an):
        return {}
    uoff, usize, _, psize, key = _G70V2(b, o)
    return {"user_name": _name_at(b, o, n, uoff, usize, an), "password_size": psize,
            "auth_key": key}


def _g70v3(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 26, an):
        return {}
    noff, nsize, t_lo, t_hi, perm, key, size, mode, block, req = _G70V3(b, o)
    return {"file_name": _name_at(b, o, n, noff, nsize, an), "created": t_lo | t_hi << 32,
            "permissions": perm, "auth_key": key, "file_size": size, "mode_code": mode,
            "mode": DNP3_FILE_MODES[mode] if mode < 4 else "unknown", "max_block_size": block,
            "request_id": req}


def _file_status(d: Point, code: int, b: bytes, o: int, n: int, at: int) -> Point:
    d["status_code"] = code
    d["status"] = DNP3_FILE_STATUS.get(code, "unknown")
    if n > at:
        d["text"] = _text(b, o + at, o + n)
    return d


def _g70v4(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 13, an):
        return {}
    handle, size, block, req, status = _G70V4(b, o)
    return _file_status({"file_handle": handle, "file_size": size, "max_block_size": block,
                         "request_id": req}, status, b, o, n, 13)


def _g70v5(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 8, an):
        return {}
    handle, block = _G70V5(b, o)
    return {"file_handle": handle, "block_number": block & 0x7FFFFFFF,
            "last_block": bool(block >> 31), "data_size": n - 8}


def _g70v6(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 9, an):
        return {}
    handle, block, status = _G70V6(b, o)
    return _file_status({"file_handle": handle, "block_number": block & 0x7FFFFFFF,
                         "last_block": bool(block >> 31)}, status, b, o, n, 9)


def _g70v7(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 20, an):
        return {}
    noff, nsize, ftype, size, t_lo, t_hi, perm, req = _G70V7(b, o)
    return {"file_name": _name_at(b, o, n, noff, nsize, an),
            "file_type": DNP3_FILE_TYPES[ftype] if ftype < 2 else "unknown",
            "file_size": size, "created": t_lo | t_hi << 32, "permissions": perm,
            "request_id": req}


def _g70v8(b: bytes, o: int, n: int, an: list[str]) -> Point:
    return {"file_name": _text(b, o, o + n)}


_G120V1 = struct.Struct("<IHBB").unpack_from
_G120V2 = struct.Struct("<IH").unpack_from
_G120V5 = struct.Struct("<IHBBBH").unpack_from
_G120V7 = struct.Struct("<IHHBIH").unpack_from
_G120V10 = struct.Struct("<BBIHHHHH").unpack_from
_G120V11 = struct.Struct("<BHH").unpack_from


def _g120v1(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 8, an):
        return {}
    csq, user, mal, reason = _G120V1(b, o)
    return {"csq": csq, "user_number": user, "mac_algorithm": mal, "reason": reason,
            "challenge_size": n - 8}


def _g120_seq_user(key: str) -> VarDecoder:
    def dec(b: bytes, o: int, n: int, an: list[str]) -> Point:
        if _short(n, 6, an):
            return {}
        seq, user = _G120V2(b, o)
        return {key: seq, "user_number": user, "data_size": n - 6}
    return dec


def _g120v5(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 11, an):
        return {}
    ksq, user, kwa, status, mal, _ = _G120V5(b, o)
    return {"ksq": ksq, "user_number": user, "key_wrap_algorithm": kwa,
            "key_status_code": status,
            "key_status": DNP3_KEY_STATUS[status] if 0 < status < 5 else "unknown",
            "mac_algorithm": mal}


def _g120v7(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 15, an):
        return {}
    csq, user, assoc, code, t_lo, t_hi = _G120V7(b, o)
    d = {"csq": csq, "user_number": user, "association_id": assoc, "error_code": code,
         "error": DNP3_AUTH_ERRORS.get(code, "unknown"), "timestamp": t_lo | t_hi << 32}
    if n > 15:
        d["text"] = _text(b, o + 15, o + n)
    return d


def _g120v10(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 16, an):
        return {}
    method, op, scs, role, expiry, ulen, _, _ = _G120V10(b, o)
    return {"key_change_method": method, "operation_code": op,
            "operation": DNP3_USER_OPERATIONS[op] if 0 < op < 4 else "unknown",
            "scs": scs, "user_role": role, "user_role_expiry": expiry,
            "user_name": _name_at(b, o, n, 16, ulen, an)}


def _g120v11(b: bytes, o: int, n: int, an: list[str]) -> Point:
    if _short(n, 5, an):
        return {}
    method, ulen, _ = _G120V11(b, o)
    return {"key_change_method": method, "user_name": _name_at(b, o, n, 5, ulen, an)}


DNP3_VAR_DECODERS: dict[tuple[int, int], VarDecoder] = {
    (70, 2): _g70v2, (70, 3): _g70v3, (70, 4): _g70v4, (70, 5): _g70v5, (70, 6): _g70v6,
    (70, 7): _g70v7, (70, 8): _g70v8,
    (120, 1): _g120v1, (120, 2): _g120_seq_user("csq"), (120, 5): _g120v5,
    (120, 6): _g120_seq_user("ksq"), (120, 7): _g120v7, (120, 10): _g120v10,
    (120, 11): _g120v11, (120, 12): _g120_seq_user("ksq"), (120, 13): _g120_seq_user("ksq"),
}
_FLOAT = {4: struct.Struct("<f").unpack_from, 8: struct.Struct("<d").unpack_from}


def _attribute(b: bytes, o: int, n: int, an: list[str]) -> Point:
    """A.1 device attribute value: data type code, length, value."""
    code, size = b[o], b[o + 1]
    v = o + 2
    d: Point = {"data_type_code": code, "data_type": DNP3_ATTRIBUTE_TYPES.get(code, "unknown")}
    if code == 1:
        d["value"] = b[v:v + size].decode("utf-8", "replace").rstrip("\0")
    elif code in (2, 3) and 0 < size <= 8:
        d["value"] = int.from_bytes(b[v:v + size], "little", signed=code == 3)
    elif code == 4 and size in _FLOAT:
        d["value"] = _finite(_FLOAT[size](b, v)[0])
    elif code == 7 and size == 6:
        d["value"] = int.from_bytes(b[v:v + 6], "little")
    elif code in (254, 255):
        d["value"] = list(b[v:v + size:2])      # variation, property pairs
    else:
        d["value"] = b[v:v + min(size, DNP3_MAX_TEXT)].hex()
    return d


# What parsing needs to know of a group and variation, looked up once per object header:
# name, kind, octets (bits when packed), fixed decoder, free-format decoder.
_PACKED, _FIXED, _STRING, _ATTRIBUTE, _UNSIZED = range(5)
Layout = tuple[str, int, int, "FixedDecoder | None", "VarDecoder | None"]


def _layout(gv: tuple[int, int]) -> Layout:
    name = DNP3_OBJECT_NAMES.get(gv, "unknown")
    g, v = gv
    if gv in DNP3_PACKED_BITS:
        return name, _PACKED, DNP3_PACKED_BITS[gv], None, None
    if g in DNP3_STRING_GROUPS and v:
        return name, _STRING, v, None, None
    if g == 0:
        return name, _ATTRIBUTE, 0, None, None
    size = DNP3_OBJECT_SIZES.get(gv)
    return (name, _UNSIZED if size is None else _FIXED, size or 0,
            DNP3_FIXED_DECODERS.get(gv), DNP3_VAR_DECODERS.get(gv))


_LAYOUTS: dict[tuple[int, int], Layout] = {gv: _layout(gv) for gv in DNP3_OBJECT_NAMES}
_UNKNOWN: Layout = ("unknown", _UNSIZED, 0, None, None)
_HEADERS: Layout = ("", _FIXED, 0, None, None)        # objects without values
# Per qualifier octet: prefix octets, prefix is a size, range octets, range reader, is
# start/stop; None for the reserved codes (and the reserved top bit).
Qualifier = tuple[int, bool, int, Any, bool]


def _qualifier(q: int) -> Qualifier | None:
    rng = DNP3_RANGE_CODES.get(q & 0x0F)
    if rng is None or q >> 4 > 6:
        return None
    width, nfields, ranged = rng
    return (DNP3_PREFIX_WIDTH[q >> 4], q >> 4 >= 4, width * nfields,
            _RANGE.get((width, nfields)), ranged)


_QUALIFIERS: tuple[Qualifier | None, ...] = tuple(_qualifier(q) for q in range(256))


def parse_objects(frag: bytes, off: int, fc: int, is_request: bool,
                  an: list[str]) -> tuple[list[Point], dict[str, Any] | None]:
    """Object headers (and point values) from ``off`` to the end of an application fragment.

    Returns the objects and, for responses that carry device attributes, the identity of the
    outstation in IDENTITY_KEYS vocabulary. Parsing stops at the first object whose size it
    cannot know (``dnp3.unknown_object``) or that runs past the fragment
    (``dnp3.truncated_object``), since nothing after it can be located.
    """
    end = len(frag)
    objects: list[Point] = []
    identity: dict[str, Any] | None = None
    headers_only = is_request and fc not in DNP3_DATA_REQUESTS
    while off < end:
        if end - off < 3:
            an.append(A_TRUNCATED_OBJECT)
            break
        g, v, q = frag[off], frag[off + 1], frag[off + 2]
        off += 3
        layout = _LAYOUTS.get((g, v), _UNKNOWN)
        obj: Point = {"group": g, "variation": v, "name": layout[0], "qualifier": q}
        objects.append(obj)
        qual = _QUALIFIERS[q]
        if qual is None:
            an.append(A_INVALID_QUALIFIER)
            break
        pw, sized, rlen, read_range, ranged = qual
        if not rlen:
            continue                       # all objects: a header without a range
        if end - off < rlen:
            an.append(A_TRUNCATED_OBJECT)
            break
        if ranged:
            start, stop = read_range(frag, off)
            obj["range_start"] = start
            obj["range_stop"] = stop
            if stop < start:
                an.append(A_INVALID_QUALIFIER)
                break
            count = stop - start + 1
        else:
            start = 0
            count = read_range(frag, off)[0]
        obj["count"] = count
        off += rlen
        kind = layout[1]
        if not count or (headers_only and not sized) or g == 60:
            # Headers only: at most an index prefix per object.
            off, ok = _walk(frag, off, end, start, count, pw, False, 0, _HEADERS, obj, an)
        elif kind == _PACKED and not sized:
            off, ok = _packed(frag, off, end, start, count, pw, layout[2], obj, an)
        elif sized or kind != _UNSIZED:
            off, ok = _walk(frag, off, end, start, count, pw, sized, layout[2], layout, obj, an)
        else:
            an.append(A_UNKNOWN_OBJECT)
            break
        if kind == _ATTRIBUTE and not is_request and obj.get("points"):
            key = DNP3_IDENTITY_ATTRIBUTES.get(v)
            value = obj["points"][0].get("value")
            if key and isinstance(value, str) and value:
                identity = identity or {}
                identity[key] = value
        if not ok:
            break
    return objects, identity


def _packed(frag: bytes, off: int, end: int, start: int, count: int, pw: int, bits: int,
            obj: Point, an: list[str]) -> tuple[int, bool]:
    """Bit-packed objects (A.2 g1v1 and the like): LSB first, padded to whole octets."""
    if pw:
        # Only a whole octet can follow an index prefix: the value is its low bit(s).
        return _walk(frag, off, end, start, count, pw, False, 1,
                     ("", _PACKED, bits, None, None), obj, an)
    nbytes = (count * bits + 7) // 8
    ok = off + nbytes <= end
    if not ok:
        an.append(A_TRUNCATED_OBJECT)
        count = (end - off) * 8 // bits
    mask = (1 << bits) - 1
    obj["points"] = [{"index": start + i,
                      "state": frag[off + (i * bits >> 3)] >> (i * bits & 7) & mask}
                     for i in range(min(count, DNP3_MAX_POINTS))]
    return off + nbytes, ok


def _walk(frag: bytes, off: int, end: int, start: int, count: int, pw: int, sized: bool,
          size: int, layout: Layout, obj: Point, an: list[str]) -> tuple[int, bool]:
    """Walk ``count`` objects of one header; decode the first DNP3_MAX_POINTS of them."""
    _, kind, table_size, fixed, var = layout
    if not pw and kind != _ATTRIBUTE:
        # Fixed size, no prefix: skip by arithmetic, decode only what is listed.
        if not size:
            return off, True
        total = count * size
        ok = off + total <= end
        if not ok:
            an.append(A_TRUNCATED_OBJECT)
            count = (end - off) // size
            total = count * size
        listed = range(min(count, DNP3_MAX_POINTS))
        if kind == _STRING:
            obj["points"] = [{"index": start + i, **_octets(frag, off + i * size, size, an)}
                             for i in listed]
        elif fixed is not None:
            obj["points"] = [fixed(frag, off + i * size, start + i) for i in listed]
        return off + total, ok
    points: list[Point] = []
    prefix = _PREFIX.get(pw)
    ok = True
    for i in range(count):
        if off + pw > end:
            ok = False
            break
        index = start + i
        n = size
        if prefix is not None:
            p = prefix(frag, off)[0]
            off += pw
            if sized:
                n = p
            else:
                index = p
        if kind == _ATTRIBUTE and not sized:
            n = 2 + frag[off + 1] if off + 2 <= end else 2
        if off + n > end:
            ok = False
            break
        if i < DNP3_MAX_POINTS:
            if not n:
                point = {"index": index}
            elif kind == _ATTRIBUTE and n >= 2:
                point = {"index": index, **_attribute(frag, off, n, an)}
            elif fixed is not None and n == table_size:
                point = fixed(frag, off, index)
            elif kind == _STRING:
                point = {"index": index, **_octets(frag, off, n, an)}
            elif var is not None:
                point = {"index": index, **var(frag, off, n, an)}
            elif kind == _PACKED:
                point = {"index": index, "state": frag[off] & (1 << table_size) - 1}
            else:
                point = {"index": index, "size": n}
            points.append(point)
        off += n
    if not ok:
        an.append(A_TRUNCATED_OBJECT)
    obj["points"] = points
    return off, ok
