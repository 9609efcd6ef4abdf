"""Modbus/TCP: MBAP framing, decoding of every public function code, request/response pairing.

Spec: "MODBUS Application Protocol Specification V1.1b3" (4.1 PDU, 5.1 public function codes,
6.1-6.21 function descriptions, 7 exception responses) and "MODBUS Messaging on TCP/IP
Implementation Guide V1.0b" (3.1.3 MBAP header). TCP and UDP port 502. Every multi-byte field,
MBAP and PDU alike, is big-endian (dpkt's default byte order, ``>`` structs below).

A record carries ``transaction_id, unit_id, func_code, func`` and the fields of its function.
``func_code`` never has the 0x80 exception bit; exception responses add ``exception_code`` and
``exception`` instead. Function and exception names are the Zeek/ICSNPP vocabulary in snake
case, so our records line up with their logs. A response that the wire leaves without context
(a read response has no address) takes it from its request, as ICSNPP does.

Anomalies (all prefixed ``modbus.``): ``invalid_protocol_id``, ``invalid_length`` (MBAP length
out of range or disagreeing with the PDU, a PDU too short or long for its function, a byte count
that disagrees), ``truncated`` (fewer bytes than the MBAP length announces), ``unknown_function``,
``invalid_value`` (a quantity, coil value, reference type or MEI field outside what 6.x allows),
``invalid_exception_code``, ``unsolicited_response``, ``func_mismatch``, ``too_many_pending``.
"""
from __future__ import annotations

import struct
from typing import Any, Callable

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session


class MBAP(dpkt.Packet):
    """MBAP header (Implementation Guide 3.1.3); ``data`` is the PDU (function code first).

    Documents the wire layout and builds test vectors; the hot path reads the same fields with
    ``struct`` because constructing a dpkt object per ADU costs more than decoding it.
    """

    __hdr__ = (
        ("transaction_id", "H", 0),
        ("protocol_id", "H", 0),
        ("length", "H", 2),       # bytes that follow: unit_id + PDU
        ("unit_id", "B", 0),
    )


MODBUS_PORT = 502                # Implementation Guide 4.1.1: registered port, TCP and UDP
MODBUS_MBAP_LEN = 7              # Implementation Guide 3.1.3
MODBUS_MIN_LENGTH = 2            # MBAP length: unit id + function code at least
MODBUS_MAX_LENGTH = 254          # App Spec 4.1: PDU <= 253 bytes (serial ADU 256), + unit id
# split() still frames a few bytes past the limit so feed() can report invalid_length on the
# record instead of the stream silently resynchronising over an almost-valid frame.
MODBUS_SPLIT_MAX_LENGTH = 260
MODBUS_EXCEPTION_BIT = 0x80      # App Spec 7: exception response = function code | 0x80
MODBUS_MAX_VALUES = 125          # values kept per record: the largest register read (6.3)
MODBUS_MAX_DATA = 64             # opaque bytes kept (as hex) per record
MODBUS_COIL_VALUES = (0xFF00, 0x0000)  # App Spec 6.5: ON and OFF, nothing else
MODBUS_FILE_REF_TYPE = 6         # App Spec 6.14/6.15: reference type is always 6
MODBUS_MAX_RECORD_NUMBER = 0x270F  # App Spec 6.14
MODBUS_MAX_FIFO = 31             # App Spec 6.18
MODBUS_MEI_DEVICE_ID = 14        # App Spec 6.21
MODBUS_CONFORMITY = frozenset({0x01, 0x02, 0x03, 0x81, 0x82, 0x83})  # App Spec 6.21
# App Spec 6.1-6.4, 6.11, 6.12, 6.17: legal quantity ranges per function
MODBUS_QUANTITY_MAX = {1: 2000, 2: 2000, 3: 125, 4: 125, 15: 0x7B0, 16: 0x7B}
# Shortest MBAP length of either the request or the response of a function (App Spec 6.x).
MODBUS_PROBE_MIN_LENGTH = {1: 4, 2: 4, 3: 4, 4: 4, 5: 6, 6: 6, 8: 4, 15: 6, 16: 6, 20: 7,
                           21: 10, 22: 8, 23: 5, 24: 4, 43: 3}
MODBUS_RW_READ_MAX = 0x7D        # App Spec 6.17
MODBUS_RW_WRITE_MAX = 0x79

# App Spec 5.1 public function codes; names as Zeek's Modbus analyzer spells them.
MODBUS_FUNCS: dict[int, str] = {
    1: "read_coils", 2: "read_discrete_inputs", 3: "read_holding_registers",
    4: "read_input_registers", 5: "write_single_coil", 6: "write_single_register",
    7: "read_exception_status", 8: "diagnostics", 11: "get_comm_event_counter",
    12: "get_comm_event_log", 15: "write_multiple_coils", 16: "write_multiple_registers",
    17: "report_slave_id", 20: "read_file_record", 21: "write_file_record",
    22: "mask_write_register", 23: "read_write_multiple_registers", 24: "read_fifo_queue",
    43: "encap_interface_transport",
}
MODBUS_KINDS = {fc: (name, name + "_exception") for fc, name in MODBUS_FUNCS.items()}
_UNKNOWN_KINDS = ("unknown", "unknown_exception")

# App Spec 7
MODBUS_EXCEPTIONS: dict[int, str] = {
    1: "illegal_function", 2: "illegal_data_address", 3: "illegal_data_value",
    4: "slave_device_failure", 5: "acknowledge", 6: "slave_device_busy",
    8: "memory_parity_error", 10: "gateway_path_unavailable",
    11: "gateway_target_device_failed_to_respond",
}

# App Spec 6.8.1 diagnostics sub-functions
MODBUS_DIAG_SUBFUNCS: dict[int, str] = {
    0x00: "return_query_data", 0x01: "restart_communications_option",
    0x02: "return_diagnostic_register", 0x03: "change_ascii_input_delimiter",
    0x04: "force_listen_only_mode", 0x0A: "clear_counters_and_diagnostic_register",
    0x0B: "return_bus_message_count", 0x0C: "return_bus_communication_error_count",
    0x0D: "return_bus_exception_error_count", 0x0E: "return_server_message_count",
    0x0F: "return_server_no_response_count", 0x10: "return_server_nak_count",
    0x11: "return_server_busy_count", 0x12: "return_bus_character_overrun_count",
    0x14: "clear_overrun_counter_and_flag",
}

# App Spec 6.19-6.21 MEI types and the basic/regular device identification objects
MODBUS_MEI_TYPES: dict[int, str] = {13: "canopen_general_reference",
                                    14: "read_device_identification"}
MODBUS_DEVICE_OBJECTS: dict[int, str] = {
    0: "vendor_name", 1: "product_code", 2: "major_minor_revision", 3: "vendor_url",
    4: "product_name", 5: "model_name", 6: "user_application_name",
}
# Device identification objects -> the inventory's IDENTITY_KEYS (of the responding server)
MODBUS_IDENTITY: dict[str, str] = {
    "vendor_name": "vendor", "product_code": "product_code", "major_minor_revision": "firmware",
    "product_name": "product", "model_name": "model", "user_application_name": "name",
}

A_PROTOCOL_ID = "modbus.invalid_protocol_id"
A_LENGTH = "modbus.invalid_length"
A_TRUNCATED = "modbus.truncated"
A_UNKNOWN_FUNCTION = "modbus.unknown_function"
A_VALUE = "modbus.invalid_value"
A_EXCEPTION_CODE = "modbus.invalid_exception_code"
A_UNSOLICITED = "modbus.unsolicited_response"
A_FUNC_MISMATCH = "modbus.func_mismatch"
A_TOO_MANY_PENDING = "modbus.too_many_pending"

_ADU_HEAD = struct.Struct(">HHHBB")   # MBAP + function code
_SPLIT_HEAD = struct.Struct(">2xHH")  # protocol id, length
_H = struct.Struct(">H")
_HH = struct.Struct(">HH")
_HHH = struct.Struct(">HHH")
_HHB = struct.Struct(">HHB")
_HHHHB = struct.Struct(">HHHHB")
_BHHH = struct.Struct(">BHHH")
_REGS = tuple(struct.Struct(f">{i}H") for i in range(MODBUS_MAX_VALUES + 1))
# App Spec 6.1: the LSB of the first data byte is the lowest addressed coil.
_BITS = tuple(tuple((b >> i) & 1 for i in range(8)) for b in range(256))

# Request fields a response inherits when it lacks them (the address of a read response,
# the sub-function of a diagnostics exception ...), per function code.
_ADDRESSED = ("address", "quantity")
_CONTEXT_KEYS: dict[int, tuple[str, ...]] = {
    1: _ADDRESSED, 2: _ADDRESSED, 3: _ADDRESSED, 4: _ADDRESSED, 5: _ADDRESSED, 6: _ADDRESSED,
    15: _ADDRESSED, 16: _ADDRESSED, 22: _ADDRESSED, 8: ("sub_func_code", "sub_func"),
    23: ("read_address", "read_quantity", "write_address", "write_quantity"),
    24: ("fifo_pointer_address",), 43: ("mei_type", "mei", "read_dev_id_code", "object_id"),
}

Fields = dict[str, Any]
Parser = Callable[[bytes, int, int, Fields, "Fields | None", list[str]], None]


def _exact(n: int, want: int, an: list[str]) -> bool:
    """Flag a body that is not ``want`` bytes long; True if the fixed fields can be read."""
    if n != want:
        an.append(A_LENGTH)
    return n >= want


def _short(n: int, want: int, an: list[str]) -> bool:
    """Flag a body shorter than the fixed part of its function; True if decoding must stop."""
    if n < want:
        an.append(A_LENGTH)
        return True
    return False


def _regs(adu: bytes, off: int, count: int) -> list[int]:
    return list(_REGS[min(count, MODBUS_MAX_VALUES)].unpack_from(adu, off))


def _bits(adu: bytes, off: int, count: int) -> list[int]:
    count = min(count, MODBUS_MAX_VALUES)
    out: list[int] = []
    for b in adu[off:off + (count + 7) // 8]:
        out.extend(_BITS[b])
    del out[count:]
    return out


def _hex(adu: bytes, off: int, end: int) -> str:
    return adu[off:min(end, off + MODBUS_MAX_DATA)].hex()


def _fixed(fmt: str, *names: str) -> Parser:
    """A parser for a body of exactly one fixed layout (most requests and echoes)."""
    layout = struct.Struct(">" + fmt)

    def parse(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
              an: list[str]) -> None:
        if _exact(end - off, layout.size, an):
            f.update(zip(names, layout.unpack_from(adu, off)))
    return parse


def _empty(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
           an: list[str]) -> None:
    _exact(end - off, 0, an)


def _unknown(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
             an: list[str]) -> None:
    if end > off:
        f["data"] = _hex(adu, off, end)


def _req_read(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
              an: list[str]) -> None:
    if _exact(end - off, 4, an):
        f["address"], q = _HH.unpack_from(adu, off)
        f["quantity"] = q
        if not 1 <= q <= MODBUS_QUANTITY_MAX[f["func_code"]]:
            an.append(A_VALUE)


def _byte_count(adu: bytes, off: int, end: int, f: Fields, an: list[str]) -> int:
    """Read a one-byte count of what follows; return how many of those bytes are present."""
    bc = f["byte_count"] = adu[off]
    if bc != end - off - 1:
        an.append(A_LENGTH)
    return min(bc, end - off - 1)


def _resp_bits(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
               an: list[str]) -> None:
    if _short(end - off, 1, an):
        return
    avail = _byte_count(adu, off, end, f, an)
    count = avail * 8
    q = req.get("quantity") if req else None
    if q is not None:
        if f["byte_count"] != (q + 7) // 8:
            an.append(A_LENGTH)
        count = min(count, q)     # drop the zero padding of the last byte
    f["values"] = _bits(adu, off + 1, count)


def _resp_regs(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
               an: list[str]) -> None:
    if _short(end - off, 1, an):
        return
    avail = _byte_count(adu, off, end, f, an)
    bc = f["byte_count"]
    q = (req.get("quantity") or req.get("read_quantity")) if req else None
    if bc & 1 or (q is not None and bc != 2 * q):
        an.append(A_LENGTH)
    f["values"] = _regs(adu, off + 1, avail // 2)


def _single_write(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
                  an: list[str]) -> None:
    if _exact(end - off, 4, an):
        f["address"], v = _HH.unpack_from(adu, off)
        f["value"] = v
        if f["func_code"] == 5 and v not in MODBUS_COIL_VALUES:
            an.append(A_VALUE)


def _diagnostics(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
                 an: list[str]) -> None:
    n = end - off
    if _short(n, 2, an):
        return
    sub = f["sub_func_code"] = _H.unpack_from(adu, off)[0]
    f["sub_func"] = MODBUS_DIAG_SUBFUNCS.get(sub, "unknown")
    # 6.8.1: return_query_data echoes N x 2 bytes, every other sub-function carries 2 bytes.
    if (n & 1) if sub == 0 else n != 4:
        an.append(A_LENGTH)
    f["data"] = _hex(adu, off + 2, end)


def _resp_event_log(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
                    an: list[str]) -> None:
    if _short(end - off, 7, an):
        return
    avail = _byte_count(adu, off, end, f, an)
    f["status"], f["event_count"], f["message_count"] = _HHH.unpack_from(adu, off + 1)
    f["events"] = list(adu[off + 7:off + 1 + min(avail, 6 + MODBUS_MAX_DATA)])


def _req_write_multi(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
                     an: list[str]) -> None:
    n = end - off
    if _short(n, 5, an):
        return
    f["address"], q, bc = _HHB.unpack_from(adu, off)
    f["quantity"] = q
    f["byte_count"] = bc
    fc = f["func_code"]
    if not 1 <= q <= MODBUS_QUANTITY_MAX[fc]:
        an.append(A_VALUE)
    want = (q + 7) // 8 if fc == 15 else 2 * q
    if bc != want or n != 5 + bc:
        an.append(A_LENGTH)
    avail = min(bc, n - 5)
    if fc == 15:
        f["values"] = _bits(adu, off + 5, min(q, avail * 8))
    else:
        f["values"] = _regs(adu, off + 5, min(q, avail // 2))


def _resp_server_id(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
                    an: list[str]) -> None:
    # 6.13: server id and run indicator are device specific in length, so kept opaque.
    if _short(end - off, 1, an):
        return
    avail = _byte_count(adu, off, end, f, an)
    f["data"] = _hex(adu, off + 1, off + 1 + avail)


def _resp_read_file(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
                    an: list[str]) -> None:
    if _short(end - off, 1, an):
        return
    avail = _byte_count(adu, off, end, f, an)
    records = []
    p, stop = off + 1, off + 1 + avail
    while p < stop:
        sub_len = adu[p]          # reference type + N x 2 bytes of record data
        if sub_len < 1 or p + 2 > stop:
            an.append(A_LENGTH)
            break
        if p + 1 + sub_len > stop or not sub_len & 1:
            an.append(A_LENGTH)
            sub_len = min(sub_len, stop - p - 1)
        ref = adu[p + 1]
        if ref != MODBUS_FILE_REF_TYPE:
            an.append(A_VALUE)
        records.append({"reference_type": ref, "values": _regs(adu, p + 2, (sub_len - 1) // 2)})
        p += 1 + sub_len
    if not records:
        an.append(A_LENGTH)
    asked = req.get("records") if req else None
    if asked and len(asked) == len(records):
        for rec, ask in zip(records, asked):
            rec["file_number"] = ask["file_number"]
            rec["record_number"] = ask["record_number"]
    f["records"] = records


def _file_records(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
                  an: list[str]) -> None:
    """FC 20 requests (6.14) and FC 21 requests and their echo (6.15): 7-byte sub-requests,
    followed in FC 21 by the record data."""
    if _short(end - off, 1, an):
        return
    avail = _byte_count(adu, off, end, f, an)
    with_data = f["func_code"] == 21
    records = []
    p, stop = off + 1, off + 1 + avail
    while p + 7 <= stop:
        ref, file_no, rec_no, rec_len = _BHHH.unpack_from(adu, p)
        if ref != MODBUS_FILE_REF_TYPE or rec_no > MODBUS_MAX_RECORD_NUMBER:
            an.append(A_VALUE)
        rec = {"reference_type": ref, "file_number": file_no, "record_number": rec_no,
               "record_length": rec_len}
        p += 7
        if with_data:
            if p + 2 * rec_len > stop:
                an.append(A_LENGTH)
            rec["values"] = _regs(adu, p, min(rec_len, (stop - p) // 2))
            p += 2 * rec_len
        records.append(rec)
    if p != stop or not records:
        an.append(A_LENGTH)
    f["records"] = records


def _req_read_write(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
                    an: list[str]) -> None:
    n = end - off
    if _short(n, 9, an):
        return
    ra, rq, wa, wq, bc = _HHHHB.unpack_from(adu, off)
    f.update(read_address=ra, read_quantity=rq, write_address=wa, write_quantity=wq,
             byte_count=bc)
    if not (1 <= rq <= MODBUS_RW_READ_MAX and 1 <= wq <= MODBUS_RW_WRITE_MAX):
        an.append(A_VALUE)
    if bc != 2 * wq or n != 9 + bc:
        an.append(A_LENGTH)
    f["values"] = _regs(adu, off + 9, min(wq, min(bc, n - 9) // 2))


def _resp_fifo(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
               an: list[str]) -> None:
    n = end - off
    if _short(n, 4, an):
        return
    bc, count = _HH.unpack_from(adu, off)
    f["byte_count"] = bc
    f["fifo_count"] = count
    # 6.18: the byte count covers the FIFO count field itself plus the registers.
    if bc != n - 2 or bc != 2 + 2 * count:
        an.append(A_LENGTH)
    if count > MODBUS_MAX_FIFO:
        an.append(A_VALUE)
    f["values"] = _regs(adu, off + 4, min(count, (n - 4) // 2))


def _mei_type(adu: bytes, off: int, f: Fields, an: list[str]) -> int:
    mei = f["mei_type"] = adu[off]
    name = MODBUS_MEI_TYPES.get(mei)
    if name is None:
        an.append(A_VALUE)
    f["mei"] = name or "unknown"
    return mei


def _req_mei(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
             an: list[str]) -> None:
    if _short(end - off, 1, an):
        return
    if _mei_type(adu, off, f, an) != MODBUS_MEI_DEVICE_ID:
        f["data"] = _hex(adu, off + 1, end)
    elif _exact(end - off, 3, an):
        code = f["read_dev_id_code"] = adu[off + 1]
        f["object_id"] = adu[off + 2]
        if not 1 <= code <= 4:
            an.append(A_VALUE)


def _resp_mei(adu: bytes, off: int, end: int, f: Fields, req: Fields | None,
              an: list[str]) -> None:
    if _short(end - off, 1, an):
        return
    if _mei_type(adu, off, f, an) != MODBUS_MEI_DEVICE_ID:
        f["data"] = _hex(adu, off + 1, end)
        return
    if _short(end - off, 6, an):
        return
    code, conformity, more, next_id, count = adu[off + 1:off + 6]
    f.update(read_dev_id_code=code, conformity_level=conformity, more_follows=more == 0xFF,
             next_object_id=next_id, number_of_objects=count)
    if not 1 <= code <= 4 or conformity not in MODBUS_CONFORMITY or more not in (0x00, 0xFF):
        an.append(A_VALUE)
    objects: dict[str, str] = {}
    p = off + 6
    for _ in range(count):
        if p + 2 > end:
            an.append(A_LENGTH)
            break
        oid, olen = adu[p], adu[p + 1]
        p += 2
        if p + olen > end:
            an.append(A_LENGTH)
        # JSON keys are strings anyway; unnamed (reserved/private) objects keep their number.
        key = MODBUS_DEVICE_OBJECTS.get(oid) or str(oid)
        objects[key] = adu[p:p + olen].decode("utf-8", "backslashreplace")
        p += olen
    if p < end:
        an.append(A_LENGTH)
    f["device_id"] = objects


_resp_status = _fixed("B", "status")
_resp_event_counter = _fixed("HH", "status", "event_count")
_resp_write_multi = _fixed("HH", "address", "quantity")
_mask_write = _fixed("HHH", "address", "and_mask", "or_mask")
_req_fifo = _fixed("H", "fifo_pointer_address")

MODBUS_REQUEST_PARSERS: dict[int, Parser] = {
    1: _req_read, 2: _req_read, 3: _req_read, 4: _req_read, 5: _single_write,
    6: _single_write, 7: _empty, 8: _diagnostics, 11: _empty, 12: _empty,
    15: _req_write_multi, 16: _req_write_multi, 17: _empty, 20: _file_records,
    21: _file_records, 22: _mask_write, 23: _req_read_write, 24: _req_fifo, 43: _req_mei,
}
MODBUS_RESPONSE_PARSERS: dict[int, Parser] = {
    1: _resp_bits, 2: _resp_bits, 3: _resp_regs, 4: _resp_regs, 5: _single_write,
    6: _single_write, 7: _resp_status, 8: _diagnostics, 11: _resp_event_counter,
    12: _resp_event_log, 15: _resp_write_multi, 16: _resp_write_multi, 17: _resp_server_id,
    20: _resp_read_file, 21: _file_records, 22: _mask_write, 23: _resp_regs, 24: _resp_fifo,
    43: _resp_mei,
}


def _partial_header(adu: bytes, from_client: bool) -> Message:
    """A record for bytes too short to hold an MBAP header and a function code."""
    f: Fields = {}
    n = len(adu)
    anomaly = A_TRUNCATED
    if n >= 2:
        f["transaction_id"] = _H.unpack_from(adu)[0]
    if n >= 6 and _H.unpack_from(adu, 4)[0] < MODBUS_MIN_LENGTH:
        anomaly = A_LENGTH
    if n >= 7:
        f["unit_id"] = adu[6]
    return Message("modbus", f, from_client, (anomaly,))


class ModbusSession(Session):
    """Per-flow state: requests waiting for their response, keyed by (transaction, unit)."""

    def __init__(self, limits: Limits) -> None:
        self.max_pending = max(0, limits.max_pending)
        # Insertion-ordered, so the first key is the oldest request when the bound is hit.
        self.pending: dict[tuple[int, int], tuple[int, Fields]] = {}

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        adu = pdu
        n = len(adu)
        if n < MODBUS_MBAP_LEN + 1:
            return [_partial_header(adu, from_client)]
        tid, pid, length, unit, raw_fc = _ADU_HEAD.unpack_from(adu)
        an: list[str] = []
        fc = raw_fc & 0x7F
        f: Fields = {"transaction_id": tid, "unit_id": unit, "func_code": fc}
        if pid:
            f["protocol_id"] = pid
            an.append(A_PROTOCOL_ID)
        end = 6 + length
        if end != n or length > MODBUS_MAX_LENGTH:   # end == n >= 8 implies length >= 2
            if not MODBUS_MIN_LENGTH <= length <= MODBUS_MAX_LENGTH:
                an.append(A_LENGTH)
                end = n           # the length field is unusable: decode what arrived
            elif end > n:
                an.append(A_TRUNCATED)
                end = n
            else:
                an.append(A_LENGTH)
        kinds = MODBUS_KINDS.get(fc, _UNKNOWN_KINDS)
        f["func"] = kinds[0]
        if kinds is _UNKNOWN_KINDS:
            an.append(A_UNKNOWN_FUNCTION)
        is_exception = raw_fc & MODBUS_EXCEPTION_BIT
        # Only a server sends exceptions: trust that over a flow oriented the wrong way round
        # (a server that opened the TCP connection itself looks like the client).
        from_client = from_client and not is_exception

        req: Fields | None = None
        key = (tid, unit)
        if not from_client:
            entry = self.pending.pop(key, None)
            if entry is None:
                an.append(A_UNSOLICITED)
            elif entry[0] != fc:
                an.append(A_FUNC_MISMATCH)
            else:
                req = entry[1]

        if is_exception:
            if _exact(end - MODBUS_MBAP_LEN - 1, 1, an):
                code = f["exception_code"] = adu[8]
                if code not in MODBUS_EXCEPTIONS:
                    an.append(A_EXCEPTION_CODE)
                f["exception"] = MODBUS_EXCEPTIONS.get(code, "unknown")
        else:
            table = MODBUS_REQUEST_PARSERS if from_client else MODBUS_RESPONSE_PARSERS
            table.get(fc, _unknown)(adu, MODBUS_MBAP_LEN + 1, end, f, req, an)

        if req is not None:
            for k in _CONTEXT_KEYS.get(fc, ()):
                if k not in f and k in req:
                    f[k] = req[k]
        elif from_client:
            pending = self.pending
            if key in pending:
                del pending[key]            # a reused transaction id replaces the old request
            elif len(pending) >= self.max_pending:
                if pending:
                    del pending[next(iter(pending))]
                an.append(A_TOO_MANY_PENDING)
            if self.max_pending:
                pending[key] = (fc, f)

        identity = None
        if fc == 43 and "device_id" in f:
            identity = {MODBUS_IDENTITY[k]: v for k, v in f["device_id"].items()
                        if k in MODBUS_IDENTITY and v} or None
        anomalies = () if not an else tuple(dict.fromkeys(an)) if len(an) > 1 else (an[0],)
        return [Message("modbus", f, from_client, anomalies,
                        kinds[1] if is_exception else kinds[0], identity)]

    def close(self, now: float) -> list[Message]:
        # Unanswered requests were already reported as requests; nothing new to say.
        self.pending.clear()
        return []


class ModbusDecoder(Decoder):
    """Modbus/TCP and Modbus/UDP (same MBAP framing) on port 502."""

    def probe(self, data: bytes) -> bool:
        # The stream reassembler probes every offset of undecodable bytes to resynchronise,
        # so this must reject zero-rich binary (RPC, TLS) that happens to hold "00 00" where
        # the protocol id goes: lengths too short for the function, malformed exceptions,
        # and a frame followed by something that is not another MBAP header.
        n = len(data)
        if n < MODBUS_MBAP_LEN + 1:
            return False
        _, pid, length, _, raw_fc = _ADU_HEAD.unpack_from(data)
        fc = raw_fc & 0x7F
        if pid or not fc or not MODBUS_MIN_LENGTH <= length <= MODBUS_MAX_LENGTH:
            return False
        if raw_fc & MODBUS_EXCEPTION_BIT:
            if length != 3 or (n > 8 and data[8] not in MODBUS_EXCEPTIONS):
                return False
        elif length < MODBUS_PROBE_MIN_LENGTH.get(fc, MODBUS_MIN_LENGTH):
            return False
        nxt = 6 + length
        return n < nxt + 4 or data[nxt + 2] == 0 == data[nxt + 3]

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        off = 0
        n = len(data)
        unpack = _SPLIT_HEAD.unpack_from
        while n - off >= 6:
            pid, length = unpack(data, off)
            if pid or length < MODBUS_MIN_LENGTH or length > MODBUS_SPLIT_MAX_LENGTH:
                # Hand over what framed cleanly; the next call reports the garbage.
                return (out, off) if out else ([], -1)
            stop = off + 6 + length
            if stop > n:
                break
            out.append(bytes(data[off:stop]))
            off = stop
        if not out and 4 <= n < 6 and (data[2] or data[3]):
            return [], -1     # a non-zero protocol id is already visible: no need to wait
        return out, off

    def session(self, limits: Limits) -> ModbusSession:
        return ModbusSession(limits)


DECODER = ModbusDecoder(name="modbus", tcp_ports=frozenset({MODBUS_PORT}),
                        udp_ports=frozenset({MODBUS_PORT}))
