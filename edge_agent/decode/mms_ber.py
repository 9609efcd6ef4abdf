"""The BER content of MMS PDUs: a bounded reader, the ISO 9506-2 types and service fields.

Specs: ITU-T X.690 (08/2015) 8.1 (identifier octets: class, constructed bit, tag numbers past
30 in the high-tag-number form; length octets: short, long and indefinite forms; 8.1.5 the
end-of-contents octets), 8.3 INTEGER, 8.6 BIT STRING, 8.19 OBJECT IDENTIFIER; ISO 9506-2 (2003)
(ServiceError, the request and response of each service: VMD support, domain and program
invocation management, variable access, files; the variable access types ObjectName,
VariableAccessSpecification, AccessResult, DataAccessError and the ``Data`` CHOICE, TimeOfDay
for binary-time) as Wireshark's mms.asn spells it, with IEC 61850-8-1 (Ed. 2) 8.1.3.7
(UtcTime). Everything is big-endian. ``mms.py`` decodes the layers and the PDU around what
this module reads.

No ASN.1 library: :func:`tlv` reads one element and checks its length against the bytes
that contain it (indefinite lengths are followed to a bounded depth). Broken encodings raise
:class:`BERError`, whose ``anomaly`` is ``"invalid_ber"`` or ``"truncated"`` for the caller to
prefix. Data values come out as JSON-ready values, the way ``goose.py`` renders the same
CHOICE: booleans, bit strings as ``"0101"``, integers, floats, strings, times as ISO 8601,
octet strings as hex, arrays and structures as lists; bounded in count, depth and size.
Service fields go into the record dict the caller passes (``f``); the names they take are in
``mms_tables.py``.
"""
from __future__ import annotations

import math
import struct
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from edge_agent.decode.mms_tables import (SVC_STATUS, SVC_GET_NAME_LIST, SVC_IDENTIFY, SVC_RENAME,
    SVC_READ, SVC_WRITE, SVC_GET_VAA, SVC_DEFINE_NVL, SVC_GET_NVLA, SVC_INITIATE_UPLOAD,
    SVC_OBTAIN_FILE, SVC_GET_PI_ATTRIBUTES, SVC_FILE_OPEN, SVC_FILE_READ, SVC_FILE_RENAME,
    SVC_FILE_DELETE, SVC_FILE_DIRECTORY, SVC_OBJECT_NAME, SVC_FIRST_NAME, SVC_DELETE_LIST,
    SVC_DOMAIN_ID, SVC_PI_ID, SVC_DOMAIN_SEQ, SVC_DOMAIN_FILE_TAG, SVC_PI_SEQ, SVC_ULSM, SVC_FRSM,
    SVC_SEGMENT, SVC_NUMBERS, MMS_ERROR_CLASSES, MMS_DATA_ACCESS_ERRORS, MMS_OBJECT_CLASSES,
    MMS_OBJECT_SCOPES, MMS_LOGICAL_STATUS, MMS_PHYSICAL_STATUS, MMS_PI_STATES)

Fields = dict[str, Any]

# X.690 8.1.2.2 identifier octet bits 8-6: class and the constructed flag
BER_UNIVERSAL = 0x00
BER_UNIVERSAL_CONS = 0x20
BER_APPLICATION_CONS = 0x60
BER_CONTEXT = 0x80
BER_CONTEXT_CONS = 0xA0
BER_CLASS_MASK = 0xC0
BER_CONSTRUCTED = 0x20
# X.680 8.4 universal tag numbers the ISO upper layers use
BER_INTEGER, BER_OID, BER_EXTERNAL, BER_SEQUENCE, BER_SET = 2, 6, 8, 16, 17
BER_VISIBLE_STRING, BER_GRAPHIC_STRING = 26, 25
BER_MAX_DEPTH = 16            # nesting followed to find where an indefinite length ends
BER_MAX_INT = 9               # octets of an integer: 64 bits, or 64 unsigned with a 0 octet

MMS_MAX_TEXT = 129            # IEC 61850-7-2 VisibleString129, the longest object reference
MMS_MAX_HEX = 32              # octet-string octets kept, as hex
MMS_MAX_BITS = 128            # bit-string bits kept
MMS_MAX_DEPTH = 8             # nested structures/arrays followed (a logical node read whole)

MMS_MAX_ITEMS = 32             # names kept per record (the real count is item_count)
MMS_MAX_VALUES = 64            # data values decoded per record, nested ones counted

A_INVALID = "invalid_ber"
A_TRUNCATED = "truncated"

_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_UTC = struct.Struct(">I3sB")
_TOD = struct.Struct(">I")
_TOD_DAYS = struct.Struct(">IH")
_MMS_EPOCH = datetime(1984, 1, 1, tzinfo=timezone.utc)   # ISO 9506-2 TimeOfDay: days since


class BERError(ValueError):
    """An encoding the reader will not follow; ``anomaly`` names why, without a prefix."""

    def __init__(self, anomaly: str) -> None:
        super().__init__(anomaly)
        self.anomaly = anomaly


def tlv(buf: bytes, off: int, end: int, depth: int = 0) -> tuple[int, int, int, int, int]:
    """The element at ``off``: (class and constructed bits, tag number, content start,
    content end, start of the next element). An indefinite length ends at its
    end-of-contents octets, which the next element skips."""
    if off + 2 > end:
        raise BERError(A_TRUNCATED)
    first = buf[off]
    number = first & 0x1F
    off += 1
    if number == 0x1F:
        number = 0
        for _ in range(3):                  # tag numbers below 2**21 are all MMS ever uses
            if off >= end:
                raise BERError(A_TRUNCATED)
            octet = buf[off]
            off += 1
            number = number << 7 | octet & 0x7F
            if not octet & 0x80:
                break
        else:
            raise BERError(A_INVALID)
        if off >= end:
            raise BERError(A_TRUNCATED)
    length = buf[off]
    off += 1
    if length & 0x80:
        width = length & 0x7F
        if width == 0:
            if not first & BER_CONSTRUCTED or depth >= BER_MAX_DEPTH:
                raise BERError(A_INVALID)
            stop = _end_of_contents(buf, off, end, depth + 1)
            return first & 0xE0, number, off, stop, stop + 2
        if width > 4:
            raise BERError(A_INVALID)
        if off + width > end:
            raise BERError(A_TRUNCATED)
        length = int.from_bytes(buf[off:off + width], "big")
        off += width
    stop = off + length
    if stop > end:
        raise BERError(A_TRUNCATED)
    return first & 0xE0, number, off, stop, stop


def _end_of_contents(buf: bytes, off: int, end: int, depth: int) -> int:
    while off + 2 <= end:
        if buf[off] == 0 and buf[off + 1] == 0:
            return off
        off = tlv(buf, off, end, depth)[4]
    raise BERError(A_TRUNCATED)


def integer(buf: bytes, start: int, stop: int, signed: bool = True) -> int:
    if not 0 < stop - start <= BER_MAX_INT:
        raise BERError(A_INVALID)
    return int.from_bytes(buf[start:stop], "big", signed=signed)


def text(buf: bytes, start: int, stop: int) -> str:
    """A VisibleString/GraphicString/UTF8String, cut to ``MMS_MAX_TEXT`` characters."""
    return buf[start:min(stop, start + MMS_MAX_TEXT)].decode("utf-8", "replace")


def oid(buf: bytes, start: int, stop: int) -> str:
    """X.690 8.19: base-128 subidentifiers, the first one packing two arcs."""
    if stop <= start or stop - start > 64 or buf[stop - 1] & 0x80:
        raise BERError(A_INVALID)
    arcs: list[int] = []
    value = 0
    for octet in buf[start:stop]:
        value = value << 7 | octet & 0x7F
        if not octet & 0x80:
            if not arcs:
                first = min(value // 40, 2)
                arcs += [first, value - 40 * first]
            else:
                arcs.append(value)
            value = 0
    return ".".join(map(str, arcs))


def bits(buf: bytes, start: int, stop: int) -> str:
    """X.690 8.6: an unused-bits octet, then the bits, first one most significant."""
    if stop <= start or buf[start] > 7:
        raise BERError(A_INVALID)
    body = buf[start + 1:min(stop, start + 1 + MMS_MAX_BITS // 8)]
    if not body:
        return ""
    out = format(int.from_bytes(body, "big"), f"0{8 * len(body)}b")
    return out[:len(out) - buf[start]] if buf[start] and stop - start - 1 == len(body) else out


def utc_time(buf: bytes, start: int, stop: int) -> str:
    """IEC 61850-8-1 8.1.3.7 UtcTime: seconds since 1970, fraction of a second in 24 bits,
    then a time-quality octet (left out here)."""
    if stop - start != 8:
        raise BERError(A_INVALID)
    secs, frac, _ = _UTC.unpack_from(buf, start)
    micros = min((int.from_bytes(frac, "big") * 1_000_000 + (1 << 23)) >> 24, 999_999)
    t = time.gmtime(secs)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d}.{micros:06d}Z")


def binary_time(buf: bytes, start: int, stop: int) -> str:
    """ISO 9506-2 TimeOfDay: milliseconds since midnight, then (6-octet form) days since
    1984-01-01. The 4-octet form is a time of day only."""
    if stop - start == 6:
        ms, days = _TOD_DAYS.unpack_from(buf, start)
        stamp = _MMS_EPOCH + timedelta(days=days, milliseconds=ms)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if stop - start == 4:
        ms = _TOD.unpack_from(buf, start)[0]
        secs, ms = divmod(ms, 1000)
        return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{ms:03d}"
    raise BERError(A_INVALID)


def _float(buf: bytes, start: int, stop: int) -> float | str:
    """ISO 9506-2 FloatingPoint: an exponent-width octet, then IEEE 754 single or double."""
    if stop - start == 5:
        value = _F32.unpack_from(buf, start + 1)[0]
    elif stop - start == 9:
        value = _F64.unpack_from(buf, start + 1)[0]
    else:
        raise BERError(A_INVALID)
    # JSON has no NaN or infinity: name them instead.
    return value if math.isfinite(value) else str(value)


def data_value(buf: bytes, ident: int, number: int, start: int, stop: int, budget: list[int],
               depth: int = 0) -> Any:
    """One ``Data`` value whose TLV has been read; ``budget[0]`` counts the values still to be
    decoded (nested ones included). Past the budget or the depth a list ends in ``"..."``."""
    budget[0] -= 1
    if ident == BER_CONTEXT_CONS and (number == 1 or number == 2):     # array, structure
        out: list[Any] = []
        off = start
        while off < stop:
            if budget[0] <= 0 or depth >= MMS_MAX_DEPTH:
                out.append("...")
                break
            i, n, s, e, off = tlv(buf, off, stop)
            out.append(data_value(buf, i, n, s, e, budget, depth + 1))
        return out
    if ident != BER_CONTEXT:
        raise BERError(A_INVALID)
    if number == 3:                                  # boolean
        if stop == start:
            raise BERError(A_INVALID)
        return buf[start] != 0
    if number == 5 or number == 6 or number == 13:   # integer, unsigned, bcd
        if stop - start > BER_MAX_INT:
            return buf[start:min(stop, start + MMS_MAX_HEX)].hex()
        return integer(buf, start, stop, number == 5)
    if number == 7:
        return _float(buf, start, stop)
    if number == 4 or number == 14:                  # bit-string, booleanArray
        return bits(buf, start, stop)
    if number == 10 or number == 16 or number == 11:  # visible, MMSString, generalized-time
        return text(buf, start, stop)
    if number == 17:
        return utc_time(buf, start, stop)
    if number == 12:
        return binary_time(buf, start, stop)
    if number == 15:
        return oid(buf, start, stop)
    return buf[start:min(stop, start + MMS_MAX_HEX)].hex()    # octet-string, real, unknown


def children(buf: bytes, off: int, end: int) -> list[tuple[int, int, int, int]]:
    """The elements from ``off`` to ``end``: (class bits, tag number, content start, end)."""
    out = []
    while off < end:
        if off + 2 <= end:
            # Short tag and length, as nearly every MMS element is: read them here, which
            # costs a third of a call to tlv().
            first = buf[off]
            length = buf[off + 1]
            if length < 0x80 and first & 0x1F != 0x1F and off + 2 + length <= end:
                out.append((first & 0xE0, first & 0x1F, off + 2, off + 2 + length))
                off += 2 + length
                continue
        i, num, s, e, off = tlv(buf, off, end)
        out.append((i, num, s, e))
    return out


def name_of(names: tuple[str, ...], code: int) -> str:
    return names[code] if 0 <= code < len(names) else "unknown"


# -- ServiceError and status ---------------------------------------------------------------------

def service_error(buf: bytes, s: int, e: int, f: Fields) -> None:
    for i, num, vs, ve in children(buf, s, e):
        if i == BER_CONTEXT_CONS and num == 0:
            _, cls, ivs, ive, _ = tlv(buf, vs, ve)
            code = integer(buf, ivs, ive)
            name, codes = MMS_ERROR_CLASSES[cls] if cls < len(MMS_ERROR_CLASSES) \
                else ("unknown", ())
            f["error_class_code"] = cls
            f["error_class"] = name
            f["error_code"] = code
            f["error"] = name_of(codes, code)
        elif i == BER_CONTEXT and num == 1:
            f["additional_code"] = integer(buf, vs, ve)
        elif i == BER_CONTEXT and num == 2:
            f["additional_description"] = text(buf, vs, ve)


# -- service request and response fields -------------------------------------------------------

def request_fields(code: int, ident: int, buf: bytes, s: int, e: int, f: Fields) -> None:
    if code == SVC_READ:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num == 0 and ve > vs and buf[vs]:
                f["specification_with_result"] = True
            elif i == BER_CONTEXT_CONS and num == 1:
                access_spec(buf, *tlv(buf, vs, ve)[:4], f)
    elif code == SVC_WRITE:
        kids = children(buf, s, e)
        if kids:
            access_spec(buf, *kids[0], f)
        if len(kids) > 1 and kids[1][:2] == (BER_CONTEXT_CONS, 0):
            f["values"] = _values(buf, kids[1][2], kids[1][3])
        else:
            raise BERError("truncated")
    elif code == SVC_GET_NAME_LIST:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT_CONS and num == 0:
                ii, inum, ivs, ive, _ = tlv(buf, vs, ve)
                if ii == BER_CONTEXT and inum == 0:
                    cls = f["object_class_code"] = integer(buf, ivs, ive)
                    f["object_class"] = name_of(MMS_OBJECT_CLASSES, cls)
            elif i == BER_CONTEXT_CONS and num == 1:
                ii, scope, ivs, ive, _ = tlv(buf, vs, ve)
                f["object_scope"] = name_of(MMS_OBJECT_SCOPES, scope)
                if scope == 1:
                    f["domain"] = text(buf, ivs, ive)
            elif i == BER_CONTEXT and num == 2:
                f["continue_after"] = text(buf, vs, ve)
    elif code == SVC_RENAME:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT_CONS and num == 1:
                object_name(buf, vs, ve, f)
            elif i == BER_CONTEXT and num == 2:
                f["new_identifier"] = text(buf, vs, ve)
    elif code in SVC_OBJECT_NAME:
        name = object_name(buf, s, e, f)
        if code == SVC_GET_NVLA:
            f["variable_list"] = name
    elif code == SVC_GET_VAA or code in SVC_FIRST_NAME:
        i, num, vs, ve, _ = tlv(buf, s, e)
        if i == BER_CONTEXT_CONS and num == 0:
            object_name(buf, vs, ve, f)
    elif code == SVC_DEFINE_NVL:
        kids = children(buf, s, e)
        if kids:
            f["variable_list"] = object_name(buf, s, kids[0][3], f)
        for i, num, vs, ve in kids[1:2]:
            if i == BER_CONTEXT_CONS and num == 0:
                _variables(buf, vs, ve, f)
    elif code in SVC_DELETE_LIST:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT_CONS and num == 1:
                _names(buf, vs, ve, f)
            elif i == BER_CONTEXT and num == 2:
                f["domain"] = text(buf, vs, ve)
    elif ident == BER_CONTEXT and code in SVC_DOMAIN_ID:
        f["domain"] = text(buf, s, e)
    elif ident == BER_CONTEXT and code in SVC_PI_ID:
        f["program_invocation"] = text(buf, s, e)
    elif ident == BER_CONTEXT and code in SVC_ULSM:
        f["ulsm_id"] = integer(buf, s, e)
    elif ident == BER_CONTEXT and code in SVC_FRSM:
        f["frsm_id"] = integer(buf, s, e)
    elif code in SVC_DOMAIN_SEQ:
        file_tag = SVC_DOMAIN_FILE_TAG.get(code)
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num == 0:
                f["domain"] = text(buf, vs, ve)
            elif i == BER_CONTEXT_CONS and num == file_tag:
                f["file_name"] = _file_name(buf, vs, ve)
            elif code == 28 and num == 1:           # terminateDownloadSequence discard
                f["discard"] = True
    elif code in SVC_PI_SEQ:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num == 0:
                f["program_invocation"] = text(buf, vs, ve)
            elif i == BER_CONTEXT and num == 1:     # start/resume executionArgument
                f["execution_argument"] = text(buf, vs, ve)
            elif i == BER_CONTEXT_CONS and num == 1:    # create: listOfDomainName
                f["domains"] = [text(buf, a, b) for _, _, a, b
                                in children(buf, vs, ve)[:MMS_MAX_ITEMS]]
    elif code in (SVC_OBTAIN_FILE, SVC_FILE_OPEN, SVC_FILE_RENAME, SVC_FILE_DIRECTORY):
        first = 1 if code == SVC_OBTAIN_FILE else 0
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT_CONS and num == first:
                f["file_name"] = _file_name(buf, vs, ve)
            elif i == BER_CONTEXT_CONS and num == first + 1:
                key = "continue_after" if code == SVC_FILE_DIRECTORY else "new_file_name"
                f[key] = _file_name(buf, vs, ve)
            elif i == BER_CONTEXT and code == SVC_FILE_OPEN and num == 1:
                f["initial_position"] = integer(buf, vs, ve, False)
    elif code == SVC_FILE_DELETE:
        f["file_name"] = _file_name(buf, s, e)


def response_fields(code: int, buf: bytes, s: int, e: int, f: Fields) -> None:
    if code == SVC_READ:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT_CONS and num == 0:
                access_spec(buf, *tlv(buf, vs, ve)[:4], f)
            elif i == BER_CONTEXT_CONS and num == 1:
                access_results(buf, vs, ve, f)
    elif code == SVC_WRITE:
        f["access_results"] = [
            "success" if num == 1 else name_of(MMS_DATA_ACCESS_ERRORS, integer(buf, vs, ve))
            for _, num, vs, ve in children(buf, s, e)[:MMS_MAX_ITEMS]]
    elif code == SVC_IDENTIFY:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num < 3:
                f[("vendor_name", "model_name", "revision")[num]] = text(buf, vs, ve)
    elif code == SVC_STATUS:
        status_fields(buf, s, e, f)
    elif code in SVC_NUMBERS:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num < 2:
                f[("number_matched", "number_deleted")[num]] = integer(buf, vs, ve, False)
    elif code == SVC_GET_PI_ATTRIBUTES:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num == 0:
                state = f["program_invocation_state_code"] = integer(buf, vs, ve)
                f["program_invocation_state"] = name_of(MMS_PI_STATES, state)
    elif code == SVC_GET_NVLA:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT_CONS and num == 1:
                _variables(buf, vs, ve, f)
    elif code == SVC_INITIATE_UPLOAD:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num == 0:
                f["ulsm_id"] = integer(buf, vs, ve)
    elif code == SVC_FILE_OPEN:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num == 0:
                f["frsm_id"] = integer(buf, vs, ve)
            elif i == BER_CONTEXT_CONS and num == 1:
                for ii, inum, ivs, ive in children(buf, vs, ve):
                    if ii == BER_CONTEXT and inum == 0:
                        f["file_size"] = integer(buf, ivs, ive, False)
    elif code == SVC_GET_NAME_LIST or code == SVC_FILE_DIRECTORY or code == SVC_FILE_READ \
            or code in SVC_SEGMENT:
        # moreFollows defaults to TRUE, except for a directory (ISO 9506-2 Annex C)
        f["more_follows"] = code != SVC_FILE_DIRECTORY
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num == 1:
                f["more_follows"] = ve > vs and buf[vs] != 0
            elif num != 0:
                continue
            elif code == SVC_GET_NAME_LIST:
                names = children(buf, vs, ve)
                f["identifiers"] = [text(buf, a, b) for _, _, a, b in names[:MMS_MAX_ITEMS]]
                f["identifier_count"] = len(names)
            elif code == SVC_FILE_DIRECTORY:
                f["file_names"] = _directory(buf, vs, ve)
            else:                                   # load data or file data: counted only
                f["data_length"] = ve - vs


def status_fields(buf: bytes, s: int, e: int, f: Fields) -> None:
    for i, num, vs, ve in children(buf, s, e):
        if i == BER_CONTEXT and num < 2:
            key = ("vmd_logical_status", "vmd_physical_status")[num]
            code = f[key + "_code"] = integer(buf, vs, ve)
            f[key] = name_of((MMS_LOGICAL_STATUS, MMS_PHYSICAL_STATUS)[num], code)


# -- names and values --------------------------------------------------------------------------

def object_name(buf: bytes, off: int, end: int, f: Fields | None) -> str:
    """ObjectName: vmd-specific [0], domain-specific [1] (domainId, itemId), aa-specific [2].
    The first one named in a record also sets ``domain`` and ``item``."""
    i, num, s, e, _ = tlv(buf, off, end)
    domain: str | None = None
    if i == BER_CONTEXT and (num == 0 or num == 2):
        item = text(buf, s, e)
    elif i == BER_CONTEXT_CONS and num == 1:
        kids = children(buf, s, e)
        if len(kids) != 2:
            raise BERError("invalid_ber")
        domain = buf[kids[0][2]:min(kids[0][3], kids[0][2] + MMS_MAX_TEXT)].decode("utf-8",
                                                                                  "replace")
        item = buf[kids[1][2]:min(kids[1][3], kids[1][2] + MMS_MAX_TEXT)].decode("utf-8",
                                                                                "replace")
    else:
        raise BERError("invalid_ber")
    if f is not None and "item" not in f:
        if domain is not None:
            f["domain"] = domain
        f["item"] = item
    return item if domain is None else domain + "/" + item


def access_spec(buf: bytes, i: int, num: int, s: int, e: int, f: Fields) -> None:
    """VariableAccessSpecification: listOfVariable [0] or variableListName [1]."""
    if i == BER_CONTEXT_CONS and num == 0:
        _variables(buf, s, e, f)
    elif i == BER_CONTEXT_CONS and num == 1:
        f["variable_list"] = object_name(buf, s, e, f)
    else:
        raise BERError("invalid_ber")


def _variables(buf: bytes, off: int, end: int, f: Fields) -> None:
    """SEQUENCE OF { variableSpecification, alternateAccess }: the names, bounded."""
    items: list[str] = []
    count = 0
    while off < end:
        _, _, s, e, off = tlv(buf, off, end)
        count += 1
        if len(items) < MMS_MAX_ITEMS and s < e:
            i, num, vs, ve, _ = tlv(buf, s, e)
            if i == BER_CONTEXT_CONS and num == 0:      # name
                items.append(object_name(buf, vs, ve, f))
    f["items"] = items
    f["item_count"] = count


def _names(buf: bytes, off: int, end: int, f: Fields) -> None:
    """SEQUENCE OF ObjectName."""
    items: list[str] = []
    count = 0
    while off < end:
        nxt = tlv(buf, off, end)[4]
        count += 1
        if len(items) < MMS_MAX_ITEMS:
            items.append(object_name(buf, off, nxt, f))
        off = nxt
    f["items"] = items
    f["item_count"] = count


def _values(buf: bytes, off: int, end: int) -> list[Any]:
    budget = [MMS_MAX_VALUES]
    out: list[Any] = []
    while off < end:
        if budget[0] <= 0:
            out.append("...")
            break
        i, num, s, e, off = tlv(buf, off, end)
        out.append(data_value(buf, i, num, s, e, budget))
    return out


def access_results(buf: bytes, off: int, end: int, f: Fields) -> None:
    """SEQUENCE OF AccessResult: failure [0] DataAccessError, or success Data."""
    budget = [MMS_MAX_VALUES]
    results: list[str] = []
    values: list[Any] = []
    while off < end and len(results) < MMS_MAX_ITEMS:
        i, num, s, e, off = tlv(buf, off, end)
        if i == BER_CONTEXT and num == 0:
            results.append(name_of(MMS_DATA_ACCESS_ERRORS, integer(buf, s, e)))
            values.append(None)
        else:
            results.append("success")
            values.append(data_value(buf, i, num, s, e, budget) if budget[0] > 0 else "...")
    f["access_results"] = results
    f["values"] = values


def _file_name(buf: bytes, off: int, end: int) -> str:
    """FileName: SEQUENCE OF GraphicString, joined with '/'."""
    return "/".join(text(buf, s, e) for _, _, s, e in children(buf, off, end)[:8])


def _directory(buf: bytes, off: int, end: int) -> list[str]:
    """listOfDirectoryEntry: the file names, bounded; entries may come wrapped in a
    SEQUENCE OF (the explicit [0] of ISO 9506-2 Annex C) or not."""
    entries = children(buf, off, end)
    if len(entries) == 1 and entries[0][2] < entries[0][3] and buf[entries[0][2]] == 0x30:
        entries = children(buf, entries[0][2], entries[0][3])
    names = []
    for _, _, s, e in entries[:MMS_MAX_ITEMS]:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT_CONS and num == 0:
                names.append(_file_name(buf, vs, ve))
    return names
