"""S7comm (S7 communication, protocol id 0x32): PDU decoding for the ISO-on-TCP decoder.

There is no public Siemens specification; the layout follows the Wireshark S7comm dissector's
documentation of the protocol (packet-s7comm.c: header, parameter and data parts, userdata),
the Siemens manual "System Software for S7-300/400, System and Standard Functions" (chapter
"System Status Lists (SZL)": W#16#xy11 module identification, W#16#xy1C component
identification, W#16#xy24 modes) and the snap7 documentation of the job functions. Carried in
COTP DT TPDUs on TCP port 102 (see ``cotp.py``, which owns the ``DECODER``); every multi-byte
field is big-endian.

A record carries ``rosctr_code, rosctr, pdu_ref`` and the fields of its function: jobs and their
acknowledgements ``func_code, func``; userdata ``function_group_code, function_group,
subfunction_code, subfunction, userdata_type, seq``. Acknowledgements carry ``error_class,
error_code, error`` (an error is data, not an anomaly); responses take the context their
request had (item addresses, block, SZL id) as ICSNPP does. SZL module and component
identification responses fill ``Message.identity``.

Anomalies (prefix ``s7comm.``): ``invalid_length`` (header, parameter or item lengths that
disagree with the PDU), ``unknown_rosctr``, ``unknown_function``, ``unsolicited_response``,
``too_many_pending``, ``reassembly_overflow`` (a fragmented userdata response past
``limits.max_pdu``).
"""
from __future__ import annotations

import struct
from typing import Any

import dpkt

from edge_agent.decode.s7comm_tables import (S7COMM_ERRORS, S7COMM_RETURN_CODES, S7COMM_SYNTAX_IDS,
    S7COMM_AREAS, S7COMM_TRANSPORT_SIZES, S7COMM_UD_GROUPS, S7COMM_UD_SUBFUNCS, S7COMM_BLOCK_TYPES,
    S7COMM_PI_SERVICES, S7COMM_SZL_LISTS, S7COMM_COMPONENTS, S7COMM_CPU_MODES, S7COMM_ROSCTR,
    ROSCTR_JOB, ROSCTR_ACK, ROSCTR_ACK_DATA, ROSCTR_USERDATA, S7COMM_FUNCS, FUNC_SETUP, FUNC_READ,
    FUNC_WRITE, FUNC_PI, FUNC_STOP, FUNC_BLOCK_CONTROL, RETURN_SUCCESS, RETURN_RESERVED,
    SYNTAX_S7ANY, SYNTAX_DBREAD, SYNTAX_DRIVEESANY, SYNTAX_NCK, AREA_DB, AREA_DI, AREA_NUMBERED,
    S7COMM_LENGTH_IN_BITS, S7COMM_UD_TYPES, UD_REQUEST, UD_RESPONSE, GROUP_MODE, GROUP_BLOCK,
    GROUP_CPU, GROUP_TIME, SUB_READ_SZL, SUB_LIST_BLOCKS, SUB_LIST_TYPE, SUB_BLOCK_INFO,
    S7COMM_FILESYSTEMS, PI_BLOCK_SERVICES, SZL_MODULE_ID, SZL_COMPONENT_ID, SZL_MODES,
    SZL_MODULE_RECORD, SZL_COMPONENT_RECORD, SZL_INDEX_MODULE, SZL_INDEX_FIRMWARE,
    SZL_INDEX_MANUFACTURER, SIEMENS_MANUFACTURER_ID)

from edge_agent.decode import Limits, Message

S7COMM_PROTOCOL_ID = 0x32        # first octet of every S7comm PDU
S7COMM_HEADER_LEN = 10           # job and userdata header
S7COMM_ACK_HEADER_LEN = 12       # ack and ack_data add error class + error code
S7COMM_MAX_ITEMS = 32            # items kept per record (the PDU size bounds the real count)
S7COMM_MAX_DATA = 32             # item/opaque bytes kept, as hex
S7COMM_MAX_FRAGMENTS = 4         # userdata data units reassembled at once per direction


class S7Header(dpkt.Packet):
    """Job/userdata header. Test vectors are built with it; the hot path uses ``struct``."""

    __hdr__ = (
        ("protocol_id", "B", S7COMM_PROTOCOL_ID),
        ("rosctr", "B", 1),
        ("redundancy_id", "H", 0),
        ("pdu_ref", "H", 0),
        ("param_length", "H", 0),
        ("data_length", "H", 0),
    )


class S7AckHeader(dpkt.Packet):
    """Ack / ack_data header: the job header plus the error class and code."""

    __hdr__ = S7Header.__hdr__ + (("error_class", "B", 0), ("error_code", "B", 0))


class S7UserDataParam(dpkt.Packet):
    """Userdata parameter head (8 octets; 12 when a data unit reference follows)."""

    __hdr__ = (
        ("head", "3s", b"\x00\x01\x12"),
        ("length", "B", 4),
        ("method", "B", 0x11),
        ("type_group", "B", 0x44),      # high nibble: push/request/response; low: group
        ("subfunction", "B", 1),
        ("seq", "B", 0),
    )


class S7AnyItem(dpkt.Packet):
    """A variable specification with syntax id S7ANY (read/write var parameter item)."""

    __hdr__ = (
        ("var_spec", "B", 0x12),
        ("length", "B", 10),
        ("syntax_id", "B", 0x10),
        ("transport_size", "B", 2),
        ("count", "H", 1),
        ("db_number", "H", 0),
        ("area", "B", 0x84),
        ("address", "3s", b"\x00\x00\x00"),   # byte address << 3 | bit address
    )


A_LENGTH = "s7comm.invalid_length"
A_UNKNOWN_ROSCTR = "s7comm.unknown_rosctr"
A_UNKNOWN_FUNCTION = "s7comm.unknown_function"
A_UNSOLICITED = "s7comm.unsolicited_response"
A_TOO_MANY_PENDING = "s7comm.too_many_pending"
A_OVERFLOW = "s7comm.reassembly_overflow"

_HDR = struct.Struct(">BBHHHH")
_H = struct.Struct(">H")
_HH = struct.Struct(">HH")
_HHHH = struct.Struct(">HHHH")
_I = struct.Struct(">I")
_ANY = struct.Struct(">BBHHB")        # syntax, transport size, count, db, area
_SETUP = struct.Struct(">xHHH")       # reserved, max amq calling, max amq called, pdu length
_DATA_ITEM = struct.Struct(">BBH")    # return code, transport size, length

# Request fields a response inherits when it lacks them.
_CONTEXT_KEYS = ("func_code", "func", "szl_id", "szl_index", "szl_name", "block_type_code",
                 "block_type", "block_number", "filesystem", "filename", "upload_id",
                 "pi_service", "pi_action")
_ITEM_CONTEXT_KEYS = ("syntax", "area", "db_number", "address", "transport_size")

Fields = dict[str, Any]


def _text(buf: bytes) -> str:
    return buf.split(b"\x00", 1)[0].decode("latin-1").strip()


def _hex(buf: bytes, off: int, end: int) -> str:
    return buf[off:min(end, off + S7COMM_MAX_DATA)].hex()


def _error(f: Fields, code: int) -> None:
    f["error_class"] = code >> 8
    f["error_code"] = code & 0xFF
    f["error"] = S7COMM_ERRORS.get(code, "unknown")


def _address(area: int, db: int, tsize: int, addr: int) -> str:
    """The S7 notation of an S7ANY item: DB1.DBX10.2, MW20, QB1, T5 ..."""
    names = S7COMM_AREAS.get(area)
    if names is None:
        return f"area_{area:#04x}.{addr >> 3}.{addr & 7}"
    letter = names[1]
    if area in AREA_NUMBERED:
        return f"{letter}{addr & 0xFFFF}"
    width = S7COMM_TRANSPORT_SIZES.get(tsize, ("", "B"))[1]
    if area == AREA_DB or area == AREA_DI:
        prefix = f"{letter}{db}.{letter}{width}"
    else:
        prefix = letter if width == "X" else letter + width
    return f"{prefix}{addr >> 3}.{addr & 7}" if width == "X" else f"{prefix}{addr >> 3}"


def _param_item(pdu: bytes, off: int, end: int) -> Fields:
    """One variable specification (the bytes after its 0x12 + length octets)."""
    syntax = pdu[off]
    item: Fields = {"syntax_id": syntax, "syntax": S7COMM_SYNTAX_IDS.get(syntax, "unknown")}
    if syntax == SYNTAX_S7ANY and end - off >= 10:
        _, tsize, count, db, area = _ANY.unpack_from(pdu, off)
        addr = int.from_bytes(pdu[off + 7:off + 10], "big")
        item["transport_size_code"] = tsize
        item["transport_size"] = S7COMM_TRANSPORT_SIZES.get(tsize, ("unknown",))[0]
        item["length"] = count
        item["db_number"] = db
        item["area_code"] = area
        item["area"] = S7COMM_AREAS.get(area, ("unknown",))[0]
        item["address"] = _address(area, db, tsize, addr)
    elif syntax == SYNTAX_DBREAD and end - off >= 2:
        # Wireshark DBREAD: number of areas, then (bytes to read, DB number, start address)
        areas = []
        p = off + 2
        for _ in range(min(pdu[off + 1], S7COMM_MAX_ITEMS)):
            if p + 5 > end:
                break
            db, start = _HH.unpack_from(pdu, p + 1)
            areas.append({"length": pdu[p], "db_number": db, "start_address": start})
            p += 5
        item["areas"] = areas
    elif syntax == SYNTAX_DRIVEESANY and end - off >= 10:
        item["parameter_number"], item["parameter_index"] = _HH.unpack_from(pdu, off + 6)
    elif syntax in SYNTAX_NCK and end - off >= 8:
        item["nck_area"] = pdu[off + 1] >> 5
        item["nck_unit"] = pdu[off + 1] & 0x1F
        item["nck_column"], item["nck_line"] = _HH.unpack_from(pdu, off + 2)
        item["nck_module"] = pdu[off + 6]
    return item


def _param_items(pdu: bytes, p: int, pend: int, f: Fields, an: list[str]) -> list[Fields]:
    if pend - p < 2:
        an.append(A_LENGTH)
        return []
    count = f["item_count"] = pdu[p + 1]
    items: list[Fields] = []
    off = p + 2
    for _ in range(count):
        if off + 3 > pend or off + 2 + pdu[off + 1] > pend:
            an.append(A_LENGTH)
            break
        ilen = pdu[off + 1]
        if len(items) < S7COMM_MAX_ITEMS:
            items.append(_param_item(pdu, off + 2, off + 2 + ilen))
        off += 2 + ilen
    f["items"] = items
    return items


def _data_items(pdu: bytes, d: int, dend: int, count: int, items: list[Fields],
                with_values: bool, an: list[str]) -> None:
    """Data part items (return code, transport size, length, value), attached to ``items``."""
    off = d
    for i in range(count):
        if off + 4 > dend:
            an.append(A_LENGTH)
            return
        ret, tsize, length = _DATA_ITEM.unpack_from(pdu, off)
        if tsize in S7COMM_LENGTH_IN_BITS:
            length = (length + 7) >> 3
        if ret != RETURN_SUCCESS and ret != RETURN_RESERVED:
            length = 0      # a failed item is its 4-octet head only, whatever its length says
        off += 4
        if off + length > dend:
            an.append(A_LENGTH)
            length = dend - off
        if i < S7COMM_MAX_ITEMS:
            if i == len(items):
                items.append({})
            item = items[i]
            if not with_values:
                item["return_code"] = ret
                item["return"] = S7COMM_RETURN_CODES.get(ret, "unknown")
            item["data_length"] = length
            item["data"] = _hex(pdu, off, off + length)
        # the sender pads every value but the last to an even length
        off += length + (length & 1 if i < count - 1 else 0)


def _filename(pdu: bytes, off: int, end: int, f: Fields) -> int:
    """A block file name "_0A00001P": identifier, type, number, file system. Returns end."""
    if off >= end:
        return off
    n = pdu[off]
    name = pdu[off + 1:min(off + 1 + n, end)].decode("latin-1")
    f["filename"] = name
    if len(name) >= 9:
        _block_name(name[1:9], f)
    return off + 1 + n


def _block_name(name: str, f: Fields) -> None:
    """Eight characters: block type (two hex digits), number (five digits), file system."""
    if not name[2:7].isdecimal():
        return
    try:
        code = int(name[0:2], 16)
    except ValueError:
        return
    f["block_type_code"] = code
    f["block_type"] = S7COMM_BLOCK_TYPES.get(code, "unknown")
    f["block_number"] = int(name[2:7])
    f["filesystem"] = S7COMM_FILESYSTEMS.get(name[7:8], "unknown")


def _block_control(pdu: bytes, p: int, pend: int, fc: int, is_job: bool, f: Fields) -> None:
    """Parameters of request/download/upload functions 0x1A-0x1F (Wireshark blockcontrol)."""
    if pend - p < 2:
        return
    status = f["function_status"] = pdu[p + 1]
    f["more_data"] = bool(status & 0x01)
    if pend - p < 8:
        return
    f["upload_id"] = _I.unpack_from(pdu, p + 4)[0]
    if is_job and fc in (0x1A, 0x1B, 0x1C, 0x1D):
        off = _filename(pdu, p + 8, pend, f)
        if fc == 0x1A and off + 1 + 13 <= pend:
            # length part 2: "1" + load memory length (6 digits) + MC7 length (6 digits)
            part = pdu[off + 1:off + 14].decode("latin-1")
            if part[1:].isdigit():
                f["load_memory_length"] = int(part[1:7])
                f["mc7_length"] = int(part[7:13])
    elif not is_job and fc == 0x1D and p + 8 < pend:
        n = pdu[p + 8]
        digits = pdu[p + 9:min(p + 9 + n, pend)]
        if digits.isdigit():
            f["block_length"] = int(digits)


def _pi_service(pdu: bytes, p: int, pend: int, fc: int, f: Fields) -> None:
    """PLC control (0x28: 7 unknown octets, parameter block, service) and stop (0x29)."""
    if fc == FUNC_STOP:
        off, block, block_len = p + 6, p, 0
    else:
        if p + 10 > pend:
            return
        block_len = _H.unpack_from(pdu, p + 8)[0]
        block = p + 10
        off = block + block_len
    if off >= pend:
        return
    name = pdu[off + 1:min(off + 1 + pdu[off], pend)].decode("latin-1")
    f["pi_service"] = name
    action = S7COMM_PI_SERVICES.get(name, "unknown")
    f["pi_action"] = "stop" if fc == FUNC_STOP else action
    if fc == FUNC_STOP or not block_len:
        return
    args = pdu[block:min(off, pend)]
    if name == "P_PROGRAM" and args[:1] == b"C":
        f["pi_action"] = "cold_start"    # snap7 Cli_PlcColdStart sends "C ", a warm start ""
    if name in PI_BLOCK_SERVICES and len(args) >= 2:
        blocks = []
        for i in range(2, 2 + 8 * min(args[0], S7COMM_MAX_ITEMS), 8):
            if i + 8 > len(args):
                break
            b: Fields = {}
            _block_name(args[i:i + 8].decode("latin-1"), b)
            blocks.append(b)
        f["blocks"] = blocks
    else:
        f["pi_args"] = args[:S7COMM_MAX_DATA].decode("latin-1")


def _bcd(b: int) -> int:
    hi, lo = b >> 4, b & 0x0F
    if hi > 9 or lo > 9:
        raise ValueError("not BCD")
    return hi * 10 + lo


def _clock(pdu: bytes, off: int, end: int, f: Fields) -> None:
    """S7 timestamp: reserved, century, then DATE_AND_TIME in BCD (Wireshark S7 Timestamp)."""
    if end - off < 10:
        return
    raw = pdu[off:off + 10]
    try:
        year = _bcd(raw[2])
        year += 1900 if year >= 90 else 2000
        month, day, hour, minute, sec = (_bcd(b) for b in raw[3:8])
        ms = _bcd(raw[8]) * 10 + _bcd(raw[9] >> 4)    # low nibble: day of week
    except ValueError:
        f["clock_raw"] = raw.hex()
        return
    f["clock"] = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{sec:02d}.{ms:03d}"


def _szl_identity(pdu: bytes, off: int, end: int, szl_id: int, rec_len: int, f: Fields
                  ) -> dict[str, Any] | None:
    """Module / component identification records into fields and the sender's identity."""
    ident: dict[str, Any] = {}
    lst = szl_id & 0xFF
    if lst == SZL_MODULE_ID and rec_len >= SZL_MODULE_RECORD:
        for r in range(off, end - SZL_MODULE_RECORD + 1, rec_len):
            index = _H.unpack_from(pdu, r)[0]
            ausbg, ausbe = _HH.unpack_from(pdu, r + 24)
            if index == SZL_INDEX_MODULE:
                f["order_number"] = ident["order_number"] = _text(pdu[r + 2:r + 22])
                f["hardware_version"] = ident["hardware"] = str(ausbg)
            elif index == SZL_INDEX_FIRMWARE and ausbg >> 8 == ord("V"):
                version = f"V{ausbg & 0xFF}.{ausbe >> 8}.{ausbe & 0xFF}"
                f["firmware_version"] = ident["firmware"] = version
    elif lst == SZL_COMPONENT_ID and rec_len >= SZL_COMPONENT_RECORD:
        for r in range(off, end - SZL_COMPONENT_RECORD + 1, rec_len):
            index = _H.unpack_from(pdu, r)[0]
            name = S7COMM_COMPONENTS.get(index)
            if name is not None:
                f[name] = _text(pdu[r + 2:r + SZL_COMPONENT_RECORD])
            elif index == SZL_INDEX_MANUFACTURER:
                f["manufacturer_id"] = ident["vendor_id"] = _H.unpack_from(pdu, r + 2)[0]
        if f.get("module_name") or f.get("automation_system_name"):
            ident["name"] = f.get("module_name") or f["automation_system_name"]
        if f.get("module_type_name"):
            ident["product"] = f["module_type_name"]
        if f.get("serial_number"):
            ident["serial"] = f["serial_number"]
        location = f.get("location_designation") or f.get("plant_designation")
        if location:
            ident["location"] = location
    if not ident:
        return None
    if ident.get("vendor_id", SIEMENS_MANUFACTURER_ID) == SIEMENS_MANUFACTURER_ID:
        # Only Siemens (and emulations of it, such as snap7) answer SZL requests.
        ident["vendor"] = "Siemens"
    ident["device_type"] = "plc"
    return ident


def _userdata_data(pdu: bytes, d: int, dend: int, group: int, sub: int, ud_type: int,
                   f: Fields) -> dict[str, Any] | None:
    """The data part of a userdata PDU (after return code, transport size and length)."""
    n = dend - d
    if group == GROUP_CPU and sub == SUB_READ_SZL and n >= 4:
        szl_id, index = _HH.unpack_from(pdu, d)
        f["szl_id"] = szl_id
        f["szl_index"] = index
        f["szl_name"] = S7COMM_SZL_LISTS.get(szl_id & 0xFF, "unknown")
        if ud_type == UD_RESPONSE and n >= 8:
            rec_len, rec_count = _HH.unpack_from(pdu, d + 4)
            f["szl_record_length"] = rec_len
            f["szl_record_count"] = rec_count
            if szl_id == SZL_MODES and n >= 12:
                f["cpu_mode"] = S7COMM_CPU_MODES.get(pdu[d + 11] & 0x0F, "unknown")
            return _szl_identity(pdu, d + 8, dend, szl_id, rec_len, f)
    elif group == GROUP_TIME:
        _clock(pdu, d, dend, f)
    elif group == GROUP_BLOCK and ud_type == UD_RESPONSE and sub == SUB_LIST_BLOCKS:
        counts: dict[str, int] = {}
        for r in range(d, dend - 3, 4):
            try:
                code = int(pdu[r:r + 2].decode("latin-1"), 16)
            except ValueError:
                continue
            counts[S7COMM_BLOCK_TYPES.get(code, f"type_{code:02x}")] = _H.unpack_from(pdu, r + 2)[0]
        f["block_counts"] = counts
    elif group == GROUP_BLOCK and ud_type == UD_REQUEST and sub == SUB_BLOCK_INFO and n >= 8:
        _block_name(pdu[d:d + 8].decode("latin-1"), f)
    elif group == GROUP_BLOCK and ud_type == UD_REQUEST and sub == SUB_LIST_TYPE and n >= 2:
        _block_name(pdu[d:d + 2].decode("latin-1") + "00000A", f)
        f.pop("block_number", None)
        f.pop("filesystem", None)
    elif group == GROUP_BLOCK and ud_type == UD_RESPONSE and sub == SUB_LIST_TYPE:
        f["block_numbers"] = [_H.unpack_from(pdu, r)[0]
                              for r in range(d, min(dend, d + 4 * S7COMM_MAX_ITEMS) - 3, 4)]
    return None


class S7Session:
    """Per-connection S7comm state: pending requests by PDU reference, userdata fragments."""

    def __init__(self, limits: Limits) -> None:
        self.max_pending = max(0, limits.max_pending)
        self.max_pdu = limits.max_pdu
        self.pending: dict[int, Fields] = {}
        # (from_client, data unit reference) -> data received so far
        self.fragments: dict[tuple[bool, int], bytes] = {}

    def decode(self, pdu: bytes, from_client: bool) -> Message:
        n = len(pdu)
        an: list[str] = []
        f: Fields = {}
        if n < S7COMM_HEADER_LEN:
            if n >= 2:
                f["rosctr_code"] = pdu[1]
                f["rosctr"] = S7COMM_ROSCTR.get(pdu[1], "unknown")
            return Message("s7comm", f, None, (A_LENGTH,), "")
        _, rosctr, _, ref, plen, dlen = _HDR.unpack_from(pdu)
        name = S7COMM_ROSCTR.get(rosctr)
        f["rosctr_code"] = rosctr
        f["rosctr"] = name or "unknown"
        f["pdu_ref"] = ref
        if name is None:
            return Message("s7comm", f, None, (A_UNKNOWN_ROSCTR,), "unknown")
        hlen = S7COMM_HEADER_LEN
        if rosctr == ROSCTR_ACK or rosctr == ROSCTR_ACK_DATA:
            hlen = S7COMM_ACK_HEADER_LEN
            if n < hlen:
                return Message("s7comm", f, False, (A_LENGTH,), "")
            _error(f, _H.unpack_from(pdu, 10)[0])
        if hlen + plen + dlen != n:
            an.append(A_LENGTH)
        p = hlen
        pend = min(n, p + plen)
        d = pend
        dend = min(n, d + dlen)
        if rosctr == ROSCTR_USERDATA:
            return self._userdata(pdu, p, pend, d, dend, from_client, f, an)

        is_job = rosctr == ROSCTR_JOB
        req: Fields | None = None
        if not is_job:
            req = self.pending.pop(ref, None)
            if req is None:
                an.append(A_UNSOLICITED)
        fc: int | None = None
        if pend > p:
            fc = pdu[p]
        elif req is not None:
            fc = req.get("func_code")
        elif is_job or rosctr == ROSCTR_ACK_DATA:
            an.append(A_LENGTH)
        kind = name         # an ack whose request was not seen names no function
        if fc is not None:
            f["func_code"] = fc
            kind = S7COMM_FUNCS.get(fc, "unknown")
            f["func"] = kind
            if kind == "unknown":
                an.append(A_UNKNOWN_FUNCTION)
            elif pend > p:
                self._function(pdu, p, pend, d, dend, fc, is_job, f, req, an)
        if req is not None:
            for k in _CONTEXT_KEYS:
                if k not in f and k in req:
                    f[k] = req[k]
        elif is_job:
            self._remember(ref, f, an)
        if not is_job and (f["error_class"] or f["error_code"]):
            kind += "_exception"    # the report and histories count these as exceptions
        anomalies = tuple(dict.fromkeys(an)) if len(an) > 1 else tuple(an)
        return Message("s7comm", f, is_job, anomalies, kind)

    def _remember(self, ref: int, f: Fields, an: list[str]) -> None:
        pending = self.pending
        if ref in pending:
            del pending[ref]            # a reused reference replaces the older request
        elif len(pending) >= self.max_pending:
            if pending:
                del pending[next(iter(pending))]
            an.append(A_TOO_MANY_PENDING)
        if self.max_pending:
            pending[ref] = f

    def _function(self, pdu: bytes, p: int, pend: int, d: int, dend: int, fc: int,
                  is_job: bool, f: Fields, req: Fields | None, an: list[str]) -> None:
        if fc == FUNC_READ or fc == FUNC_WRITE:
            if is_job:
                items = _param_items(pdu, p, pend, f, an)
                if fc == FUNC_WRITE:
                    _data_items(pdu, d, dend, f.get("item_count", 0), items, True, an)
                return
            if pend - p < 2:
                an.append(A_LENGTH)
                return
            count = f["item_count"] = pdu[p + 1]
            items = []
            if fc == FUNC_READ:
                _data_items(pdu, d, dend, count, items, False, an)
            else:
                if dend - d < count:
                    an.append(A_LENGTH)
                for ret in pdu[d:min(dend, d + count, d + S7COMM_MAX_ITEMS)]:
                    items.append({"return_code": ret,
                                  "return": S7COMM_RETURN_CODES.get(ret, "unknown")})
            asked = req.get("items") if req else None
            if asked:
                for item, ask in zip(items, asked):
                    for k in _ITEM_CONTEXT_KEYS:
                        if k in ask:
                            item[k] = ask[k]
            f["items"] = items
        elif fc == FUNC_SETUP:
            if pend - p >= 8:
                f["max_amq_calling"], f["max_amq_called"], f["pdu_length"] = \
                    _SETUP.unpack_from(pdu, p + 1)
            else:
                an.append(A_LENGTH)
        elif fc in FUNC_BLOCK_CONTROL:
            _block_control(pdu, p, pend, fc, is_job, f)
            if not is_job and fc in (0x1B, 0x1E) and dend - d >= 2:
                f["data_length"] = _H.unpack_from(pdu, d)[0]
        elif (fc == FUNC_PI or fc == FUNC_STOP) and is_job:
            _pi_service(pdu, p, pend, fc, f)

    def _userdata(self, pdu: bytes, p: int, pend: int, d: int, dend: int, from_client: bool,
                  f: Fields, an: list[str]) -> Message:
        if pend - p < 8:
            an.append(A_LENGTH)
            return Message("s7comm", f, None, tuple(dict.fromkeys(an)), "")
        ud_len, method, tg, sub, seq = pdu[p + 3:p + 8]
        ud_type, group = tg >> 4, tg & 0x0F
        f["method"] = method
        f["userdata_type_code"] = ud_type
        f["userdata_type"] = S7COMM_UD_TYPES.get(ud_type, "unknown")
        f["function_group_code"] = group
        group_name = S7COMM_UD_GROUPS.get(group)
        if group_name is None:
            f["function_group"] = "unknown"
            an.append(A_UNKNOWN_FUNCTION)
        else:
            f["function_group"] = group_name
        f["subfunction_code"] = sub
        sub_name = S7COMM_UD_SUBFUNCS.get(group, {}).get(sub)
        f["subfunction"] = sub_name or "unknown"
        f["seq"] = seq
        more = False
        dur = 0
        if ud_len >= 8 and pend - p >= 12:
            dur = f["data_unit_ref"] = pdu[p + 8]
            more = pdu[p + 9] != 0
            f["last_data_unit"] = not more
            _error(f, _H.unpack_from(pdu, p + 10)[0])
        kind = (group_name or "unknown") if sub_name is None else sub_name
        if group == GROUP_MODE:
            kind = "mode_transition"
            f["mode"] = f["subfunction"]

        ident = None
        if dend - d >= 4:
            ret, _, length = _DATA_ITEM.unpack_from(pdu, d)
            if ud_type != UD_REQUEST:
                # requests put 0xff before data and 0x0a before none: not a result
                f["return_code"] = ret
                f["return"] = S7COMM_RETURN_CODES.get(ret, "unknown")
            body, bend = d + 4, min(dend, d + 4 + length)
            if bend - body < length:
                an.append(A_LENGTH)
            key = (from_client, dur)
            held = self.fragments.pop(key, None) if dur else None
            if held is not None or more:
                data = (held or b"") + pdu[body:bend]
                if more:
                    if len(data) > self.max_pdu:
                        an.append(A_OVERFLOW)
                    else:
                        if len(self.fragments) >= S7COMM_MAX_FRAGMENTS:
                            del self.fragments[next(iter(self.fragments))]
                        self.fragments[key] = data
                    # Decode what the first unit holds; the last one gets the whole list.
                    if held is None:
                        _userdata_data(pdu, body, bend, group, sub, ud_type, f)
                else:
                    f["data_units_reassembled"] = True
                    ident = _userdata_data(data, 0, len(data), group, sub, ud_type, f)
            else:
                ident = _userdata_data(pdu, body, bend, group, sub, ud_type, f)

        is_request: bool | None = None
        ref = f["pdu_ref"]
        if ud_type == UD_REQUEST:
            is_request = True
            self._remember(ref, f, an)
        elif ud_type == UD_RESPONSE:
            is_request = False
            req = self.pending.pop(ref, None)
            if req is None:
                an.append(A_UNSOLICITED)
            else:
                for k in ("szl_id", "szl_index", "szl_name", "block_type_code", "block_type",
                          "block_number", "filesystem"):
                    if k not in f and k in req:
                        f[k] = req[k]
        if f.get("error_class") or f.get("error_code"):
            kind += "_exception"
        anomalies = tuple(dict.fromkeys(an)) if len(an) > 1 else tuple(an)
        return Message("s7comm", f, is_request, anomalies, kind,
                       ident if not from_client else None)
