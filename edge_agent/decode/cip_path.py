"""CIP EPATH: the padded paths of Message Router requests and connection paths.

Spec: ODVA "The CIP Networks Library, Volume 1" Appendix C (C-1.4.1 port segments, C-1.4.2
logical segments with the electronic key, C-1.4.3 network, C-1.4.4 symbolic, C-1.4.5 data
segments). Little-endian. Used by ``cip.py`` (request paths, Unconnected Send route paths) and
``cip_objects.py`` (Forward Open/Close connection paths); no state.
"""
from __future__ import annotations

import struct
from typing import Any

from edge_agent.decode.cip_tables import A_PATH, CIP_CLASSES, CIP_MAX_LIST

Fields = dict[str, Any]

_H = struct.Struct("<H")
_I = struct.Struct("<I")

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
