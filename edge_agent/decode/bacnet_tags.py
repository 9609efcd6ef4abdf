"""BACnet tags: the clause 20.2 tag encoding.

Kept apart from :mod:`edge_agent.decode.bacnet` (BVLL, NPDU, APDU and the services) because this
is what every service production is made of: :func:`read_tag` reads one tag header (20.2.1:
tag number, class, length/value/type, extended numbers and lengths, opening and closing tags),
:func:`app_value` decodes an application-tagged primitive (20.2.2-20.2.14), :func:`read_values`
an abstract-syntax value up to its closing tag, and :class:`TagReader` walks a production's
context tags in order. Lengths are bounded: strings, octet strings and value lists are cut at
``BACNET_MAX_*``. Hostile bytes raise :class:`Truncated` or :class:`InvalidTag` only. The
clause 21 enumerations and the vendor ids are in :mod:`edge_agent.decode.bacnet_tables`.
"""
from __future__ import annotations

import math
import struct
from typing import Any

from edge_agent.decode.bacnet_tables import BACNET_OBJECT_TYPES, BACNET_PROPERTIES
# Taken from here by the tests.
from edge_agent.decode.bacnet_tables import (BACNET_CONFIRMED_SERVICES,  # noqa: F401
    BACNET_UNCONFIRMED_SERVICES, BACNET_VENDORS)

BACNET_MAX_VALUES = 64           # decoded values kept per property value, properties per record
BACNET_MAX_STRING = 256          # characters kept of a character string
BACNET_MAX_OCTETS = 64           # octets kept (as hex) of an octet string
BACNET_MAX_DEPTH = 8             # constructed values nested deeper are summarised
BACNET_MAX_INT = 8               # octets of an integer (20.2.4-20.2.5 allow 1-8 in practice)

APP, CTX, OPEN, CLOSE = 0, 1, 2, 3   # the tag classes read_tag returns

_H = struct.Struct(">H")
_I = struct.Struct(">I")
_F = struct.Struct(">f")
_D = struct.Struct(">d")


# --- 20.2 tag encoding --------------------------------------------------------------------------

class Truncated(Exception):
    """A service ran out of bytes inside a field (becomes ``bacnet.truncated``)."""


class InvalidTag(Exception):
    """A tag whose length cannot be right for its type (becomes ``bacnet.invalid_length``)."""


def read_tag(b: bytes, off: int, end: int) -> tuple[int, int, int, int]:
    """One tag header: (tag number, class, length or value, offset of the content).

    For an application boolean the length is its value and no content follows (20.2.3).
    """
    if off >= end:
        raise Truncated
    t = b[off]
    off += 1
    num = t >> 4
    if num == 15:                 # 20.2.1.2: extended tag number in the next octet
        if off >= end:
            raise Truncated
        num = b[off]
        off += 1
    lvt = t & 7
    if t & 8:
        if lvt == 6:
            return num, OPEN, 0, off
        if lvt == 7:
            return num, CLOSE, 0, off
        cls = CTX
    else:
        cls = APP
        if num == 1:
            return num, APP, lvt, off
    if lvt == 5:                  # 20.2.1.3.1: extended length
        if off >= end:
            raise Truncated
        lvt = b[off]
        off += 1
        if lvt == 254:
            if off + 2 > end:
                raise Truncated
            lvt = _H.unpack_from(b, off)[0]
            off += 2
        elif lvt == 255:
            if off + 4 > end:
                raise Truncated
            lvt = _I.unpack_from(b, off)[0]
            off += 4
    if off + lvt > end:
        raise Truncated
    return num, cls, lvt, off


def uint(b: bytes, off: int, n: int) -> int:
    # 20.2.4: at most 8 octets in practice; a longer one would make an integer too long to print
    if n > BACNET_MAX_INT:
        raise InvalidTag
    return int.from_bytes(b[off:off + n], "big")


def object_id(b: bytes, off: int, n: int) -> tuple[int, int]:
    if n != 4:
        raise InvalidTag
    v = _I.unpack_from(b, off)[0]
    return v >> 22, v & 0x3FFFFF   # 20.2.14: 10-bit type, 22-bit instance


def object_type_name(code: int) -> str:
    return BACNET_OBJECT_TYPES.get(code, "proprietary" if code >= 128 else "unknown")


def property_name(code: int) -> str:
    return BACNET_PROPERTIES.get(code, "proprietary" if code >= 512 else "unknown")


def _real(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)   # JSON has no NaN or infinity


def charstring(b: bytes, off: int, n: int) -> str:
    if n < 1:
        raise InvalidTag
    charset = b[off]
    raw = b[off + 1:off + n]
    # 20.2.9: 0 UTF-8 (ANSI X3.4 before 2008), 3 UCS-4, 4 UCS-2, 5 ISO 8859-1
    if charset == 0:
        s = raw.decode("utf-8", "backslashreplace")
    elif charset == 4:
        s = raw.decode("utf-16-be", "backslashreplace")
    elif charset == 3:
        s = raw.decode("utf-32-be", "backslashreplace")
    elif charset == 5:
        s = raw.decode("latin-1")
    elif charset == 1 and len(raw) >= 2:
        # 1 IBM/Microsoft DBCS: a two-octet code page (932 is Shift-JIS) precedes the text
        try:
            s = raw[2:].decode(f"cp{_H.unpack_from(raw)[0]}", "backslashreplace")
        except LookupError:
            s = raw[2:].hex()
    else:
        s = raw.hex()
    return s[:BACNET_MAX_STRING]


def _date(b: bytes, off: int, n: int) -> str:
    if n != 4:
        raise InvalidTag
    y, m, d = b[off], b[off + 1], b[off + 2]
    # 20.2.12: 255 in any field means "any" (unspecified)
    return (f"{'*' if y == 255 else y + 1900}-{'*' if m == 255 else f'{m:02d}'}-"
            f"{'*' if d == 255 else f'{d:02d}'}")


def _time(b: bytes, off: int, n: int) -> str:
    if n != 4:
        raise InvalidTag
    return ":".join("*" if v == 255 else f"{v:02d}" for v in b[off:off + 3]) + (
        "" if b[off + 3] == 255 else f".{b[off + 3]:02d}")


def app_value(b: bytes, off: int, num: int, n: int) -> Any:
    """Decode one application-tagged primitive (20.2.2-20.2.14)."""
    if num == 1:
        return bool(n)
    if num == 2 or num == 9:
        return uint(b, off, n)
    if num == 3:
        if n > BACNET_MAX_INT:
            raise InvalidTag
        return int.from_bytes(b[off:off + n], "big", signed=True)
    if num == 4:
        if n != 4:
            raise InvalidTag
        return _real(_F.unpack_from(b, off)[0])
    if num == 5:
        if n != 8:
            raise InvalidTag
        return _real(_D.unpack_from(b, off)[0])
    if num == 7:
        return charstring(b, off, n)
    if num == 6:
        return b[off:off + min(n, BACNET_MAX_OCTETS)].hex()
    if num == 8:
        if n < 1:
            raise InvalidTag
        unused = b[off] & 7
        bits = "".join(f"{x:08b}" for x in b[off + 1:off + min(n, 1 + BACNET_MAX_OCTETS)])
        return bits[:len(bits) - unused] if unused and n <= 1 + BACNET_MAX_OCTETS else bits
    if num == 10:
        return _date(b, off, n)
    if num == 11:
        return _time(b, off, n)
    if num == 12:
        t, i = object_id(b, off, n)
        return f"{object_type_name(t)}:{i}"
    if num == 0:
        return None
    return b[off:off + min(n, BACNET_MAX_OCTETS)].hex()   # 13-15 reserved


def read_values(b: bytes, off: int, end: int, close: int, depth: int = 0) -> tuple[list[Any], int]:
    """Values up to the closing tag ``close`` (an abstract-syntax property value, 20.2.1.3.2).

    Application tags decode by type; a context tag without its production is kept as
    ``{"context_tag", "data"}``; a constructed value becomes a nested list. Returns the values
    (at most BACNET_MAX_VALUES are kept) and the offset after the closing tag.
    """
    out: list[Any] = []
    while True:
        num, cls, n, p = read_tag(b, off, end)
        if cls == CLOSE:
            if num != close:
                raise InvalidTag
            return out, p
        if cls == OPEN:
            inner, off = read_values(b, p, end, num, depth + 1) if depth < BACNET_MAX_DEPTH else (
                [], _skip_constructed(b, p, end, num))
            if len(out) < BACNET_MAX_VALUES:
                out.append(inner)
            continue
        if len(out) < BACNET_MAX_VALUES:
            if cls == APP:
                out.append(app_value(b, p, num, n))
            else:
                out.append({"context_tag": num, "data": b[p:p + min(n, BACNET_MAX_OCTETS)].hex()})
        off = p + (0 if cls == APP and num == 1 else n)


def _skip_constructed(b: bytes, off: int, end: int, close: int) -> int:
    depth = 1
    while True:
        num, cls, n, p = read_tag(b, off, end)
        if cls == OPEN:
            depth += 1
        elif cls == CLOSE:
            depth -= 1
            if not depth:
                return p
        off = p + (0 if cls in (OPEN, CLOSE) or (cls == APP and num == 1) else n)


def scalar(vals: list[Any]) -> Any:
    return vals[0] if len(vals) == 1 else vals


class TagReader:
    """Walks the tags of one service production, in order, with optional fields."""

    __slots__ = ("b", "end", "off")

    def __init__(self, b: bytes, off: int, end: int) -> None:
        self.b, self.off, self.end = b, off, end

    def more(self) -> bool:
        return self.off < self.end

    def peek(self) -> tuple[int, int, int, int]:
        return read_tag(self.b, self.off, self.end)

    def ctx(self, num: int, optional: bool = False) -> tuple[int, int] | None:
        """A context primitive [num]: (content offset, length), or None if absent/optional."""
        if not self.more():
            if optional:
                return None
            raise Truncated
        tn, cls, n, p = self.peek()
        if cls != CTX or tn != num:
            if optional:
                return None
            raise InvalidTag
        self.off = p + n
        return p, n

    def ctx_uint(self, num: int, optional: bool = False) -> int | None:
        r = self.ctx(num, optional)
        return None if r is None else uint(self.b, r[0], r[1])

    def ctx_object(self, num: int) -> tuple[int, int]:
        p, n = self.ctx(num)          # type: ignore[misc]
        return object_id(self.b, p, n)

    def app(self, want: int | None = None) -> Any:
        tn, cls, n, p = self.peek()
        if cls != APP or (want is not None and tn != want):
            raise InvalidTag
        self.off = p + (0 if tn == 1 else n)
        return app_value(self.b, p, tn, n)

    def opening(self, num: int, optional: bool = False) -> bool:
        if not self.more():
            if optional:
                return False
            raise Truncated
        tn, cls, _, p = self.peek()
        if cls != OPEN or tn != num:
            if optional:
                return False
            raise InvalidTag
        self.off = p
        return True

    def closing(self, num: int) -> bool:
        """Consume the closing tag [num] if it is next."""
        if not self.more():
            raise Truncated
        tn, cls, _, p = self.peek()
        if cls == CLOSE and tn == num:
            self.off = p
            return True
        return False

    def value(self, num: int) -> Any:
        """An abstract-syntax value enclosed in [num] opening/closing tags."""
        self.opening(num)
        vals, self.off = read_values(self.b, self.off, self.end, num)
        return scalar(vals)
