"""Omron FINS over UDP and TCP (FINS/TCP).

Spec: OMRON W227 "FINS Commands Reference Manual": 3 (FINS frames: ICF, RSV, GCT, DNA, DA1,
DA2, SNA, SA1, SA2, SID, then MRC/SRC and parameters; responses add MRES/SRES end codes,
8-3 end code list), 5 (the command list: 5-1 command codes, 5-2-2 memory area designations
of the CS/CJ series, 5-3-x each command's parameters). FINS/TCP framing from W421/W342 "FINS/TCP
method" 7 ("FINS" magic, length of what follows, command, error code; node address data send
commands 0/1 before the FINS frames of command 2). UDP and TCP port 9600. Big-endian.

A record is one FINS frame (or one FINS/TCP handshake frame): FINS/TCP adds ``tcp_command,
tcp_command_name, tcp_error_code`` (and ``client_node, server_node`` in the handshake); the
header gives ``icf, gateway, is_response, response_required, gct, dst_net, dst_node,
dst_unit, src_net, src_node, src_unit, sid``; then ``command_code`` (0x0101 -> 257) and
``command`` (W227 name in snake case, ICSNPP's vocabulary), responses ``end_code`` and
``end_status`` (8-3). Parameters: memory area commands ``memory_area_code, memory_area,
address, bit, count`` (and ``values`` of word writes and read responses, bounded); parameter
and program area commands their area, word and count; Run its ``mode``; clock read/write the
``clock`` (ISO 8601 from BCD); controller status read ``status`` and ``mode``; controller data
read ``controller_model, controller_version`` which become ``Message.identity`` (model,
firmware) of the responding PLC. A response takes the context of its request (paired by SID
and node addresses, bounded by ``limits.max_pending``); a request and its response share the
kind (the command), a response with an error end code is ``<command>_exception``.

Anomalies (prefixed ``omron_fins.``): ``bad_magic`` (a FINS/TCP frame without "FINS"),
``invalid_length`` (a FINS/TCP length disagreeing with the frame or over the 2,012-octet FINS
limit, parameters too short or long for their command), ``unknown_command``, ``truncated``
(shorter than a FINS header), ``tcp_error`` (a FINS/TCP error code other than 0).
"""
from __future__ import annotations

import struct
from typing import Any

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session


class FINSTCPHeader(dpkt.Packet):
    """FINS/TCP header (W421 7); ``data`` is the handshake node data or a FINS frame."""

    __hdr__ = (
        ("magic", "4s", b"FINS"),
        ("length", "I", 8),         # octets after this field: command + error code + data
        ("command", "I", 2),
        ("error_code", "I", 0),
    )


class FINSHeader(dpkt.Packet):
    """FINS header (W227 3-1) and command code; ``data`` holds end code / parameters."""

    __hdr__ = (
        ("icf", "B", 0x80),
        ("rsv", "B", 0),
        ("gct", "B", 2),
        ("dna", "B", 0), ("da1", "B", 0), ("da2", "B", 0),
        ("sna", "B", 0), ("sa1", "B", 0), ("sa2", "B", 0),
        ("sid", "B", 0),
        ("command_code", "H", 0x0101),
    )


FINS_PORT = 9600                  # W227 / W421: UDP and TCP
FINS_MAGIC = b"FINS"
FINS_TCP_HEADER_LEN = 16
FINS_HEADER_LEN = 12              # 10-octet header + MRC/SRC
FINS_MAX_FRAME = 2012 + 2         # W227 3-1: 2,012 octets of command frame, + end code
FINS_SPLIT_MAX = 65535            # framing bound; feed() flags anything over FINS_MAX_FRAME
FINS_ICF_GATEWAY = 0x80           # W227 3-1 ICF bit 7: use gateway
FINS_ICF_RESPONSE = 0x40          # bit 6: 1 = response
FINS_ICF_NO_RESPONSE = 0x01       # bit 0: 1 = response not required
FINS_MAX_VALUES = 64              # words kept per record
FINS_MAX_ITEMS = 32               # multiple memory area read items kept
FINS_CONTROLLER_DATA_00 = 92      # W227 5-3-9: response data of controller data read "00"
FINS_CONTROLLER_DATA_01 = 67      # and of "01"

# W421 7: FINS/TCP commands and error codes
FINS_TCP_COMMANDS: dict[int, str] = {0: "node_address_data_send_client",
                                     1: "node_address_data_send_server", 2: "frame_send",
                                     3: "frame_send_error_notification",
                                     6: "connection_confirmation"}
FINS_TCP_ERRORS: dict[int, str] = {0: "normal", 1: "bad_magic", 2: "data_length_too_long",
                                   3: "command_not_supported", 0x20: "all_connections_in_use",
                                   0x21: "node_already_connected",
                                   0x22: "protected_node_unregistered_ip",
                                   0x23: "client_node_out_of_range",
                                   0x24: "same_node_as_server",
                                   0x25: "all_node_addresses_in_use"}

# W227 5-1: command codes
FINS_COMMANDS: dict[int, str] = {
    0x0101: "memory_area_read", 0x0102: "memory_area_write", 0x0103: "memory_area_fill",
    0x0104: "multiple_memory_area_read", 0x0105: "memory_area_transfer",
    0x0201: "parameter_area_read", 0x0202: "parameter_area_write",
    0x0203: "parameter_area_clear", 0x0220: "data_link_table_read",
    0x0221: "data_link_table_write", 0x0304: "program_area_protect",
    0x0305: "program_area_protect_clear", 0x0306: "program_area_read",
    0x0307: "program_area_write", 0x0308: "program_area_clear", 0x0401: "run", 0x0402: "stop",
    0x0403: "reset", 0x0501: "controller_data_read", 0x0502: "connection_data_read",
    0x0601: "controller_status_read", 0x0602: "network_status_read",
    0x0603: "data_link_status_read", 0x0620: "cycle_time_read", 0x0701: "clock_read",
    0x0702: "clock_write", 0x0801: "internode_echo_test",
    0x0802: "broadcast_test_results_read", 0x0803: "broadcast_test_data_send",
    0x0920: "message_read_clear", 0x0C01: "access_right_acquire",
    0x0C02: "access_right_forced_acquire", 0x0C03: "access_right_release",
    0x2101: "error_clear", 0x2102: "error_log_read", 0x2103: "error_log_clear",
    0x2140: "fins_write_access_log_read", 0x2141: "fins_write_access_log_clear",
    0x2201: "file_name_read", 0x2202: "single_file_read", 0x2203: "single_file_write",
    0x2204: "file_memory_format", 0x2205: "file_delete", 0x2206: "volume_label_create_delete",
    0x2207: "file_copy", 0x2208: "file_name_change", 0x2209: "file_data_check",
    0x220A: "memory_area_file_transfer", 0x220B: "parameter_area_file_transfer",
    0x220C: "program_area_file_transfer", 0x2215: "create_delete_directory",
    0x2220: "memory_cassette_transfer", 0x2301: "forced_set_reset",
    0x2302: "forced_set_reset_cancel", 0x230A: "multiple_forced_status_read",
    0x2601: "name_set", 0x2602: "name_delete", 0x2603: "name_read",
}

# W227 5-2-2: CS/CJ-mode memory area codes (bit and word access)
FINS_MEMORY_AREAS: dict[int, str] = {
    0x30: "cio_bit", 0x31: "wr_bit", 0x32: "hr_bit", 0x33: "ar_bit",
    0x70: "cio_bit_forced", 0x71: "wr_bit_forced", 0x72: "hr_bit_forced",
    0xB0: "cio_word", 0xB1: "wr_word", 0xB2: "hr_word", 0xB3: "ar_word",
    0xF0: "cio_word_forced", 0xF1: "wr_word_forced", 0xF2: "hr_word_forced",
    0x09: "tim_cnt_flag", 0x49: "tim_cnt_flag_forced", 0x89: "tim_cnt_pv",
    0x02: "dm_bit", 0x82: "dm_word", 0x0A: "em_current_bit", 0x98: "em_current_word",
    0xBC: "em_current_bank", 0x06: "task_flag_status", 0x04: "task_flag_bit",
    0xDC: "index_register", 0xBD: "data_register", 0x07: "clock_pulse_condition_flag",
    **{0x20 + i: f"em{i:x}_bit" for i in range(16)},
    **{0xA0 + i: f"em{i:x}_word" for i in range(16)},
    **{0xE0 + i: f"em{i:x}_word" for i in range(0x10, 0x19)},   # EM banks 10-18 (CJ2)
}
FINS_BIT_AREAS = frozenset(c for c, n in FINS_MEMORY_AREAS.items() if "_bit" in n or
                           n.endswith("_flag") or n == "tim_cnt_flag_forced")

# W227 8-3: end codes (main code bits 0-6, sub code bits 0-5; the high bits are flags)
FINS_END_CODES: dict[int, str] = {
    0x0000: "normal_completion", 0x0001: "service_canceled",
    0x0101: "local_node_not_in_network", 0x0102: "token_timeout",
    0x0103: "retries_failed", 0x0104: "too_many_send_frames",
    0x0105: "node_address_range_error", 0x0106: "node_address_duplication",
    0x0201: "destination_node_not_in_network", 0x0202: "unit_missing",
    0x0203: "third_node_missing", 0x0204: "destination_node_busy",
    0x0205: "response_timeout", 0x0301: "communications_controller_error",
    0x0302: "cpu_unit_error", 0x0303: "controller_error", 0x0304: "unit_number_error",
    0x0401: "undefined_command", 0x0402: "not_supported_by_model_version",
    0x0501: "destination_address_setting_error", 0x0502: "no_routing_tables",
    0x0503: "routing_table_error", 0x0504: "too_many_relays",
    0x1001: "command_too_long", 0x1002: "command_too_short",
    0x1003: "elements_data_dont_match", 0x1004: "command_format_error",
    0x1005: "header_error", 0x1101: "area_classification_missing",
    0x1102: "access_size_error", 0x1103: "address_range_error",
    0x1104: "address_range_exceeded", 0x1106: "program_missing", 0x1109: "relational_error",
    0x110A: "duplicate_data_access", 0x110B: "response_too_long", 0x110C: "parameter_error",
    0x2002: "protected", 0x2003: "table_missing", 0x2004: "data_missing",
    0x2005: "program_missing", 0x2006: "file_missing", 0x2007: "data_mismatch",
    0x2101: "read_only", 0x2102: "protected_cannot_write", 0x2103: "cannot_register",
    0x2105: "program_missing", 0x2106: "file_missing", 0x2107: "file_name_already_exists",
    0x2108: "cannot_change", 0x2201: "not_possible_during_execution",
    0x2202: "not_possible_while_running", 0x2203: "wrong_plc_mode",
    0x2204: "wrong_plc_mode", 0x2205: "wrong_plc_mode", 0x2206: "wrong_plc_mode",
    0x2207: "specified_node_not_polling_node", 0x2208: "step_cannot_be_executed",
    0x2301: "file_device_missing", 0x2302: "memory_missing", 0x2303: "clock_missing",
    0x2401: "table_missing", 0x2502: "memory_error", 0x2503: "io_setting_error",
    0x2504: "too_many_io_points", 0x2505: "cpu_bus_error", 0x2506: "io_duplication",
    0x2507: "io_bus_error", 0x2509: "sysmac_bus2_error", 0x250A: "cpu_bus_unit_error",
    0x250D: "sysmac_bus_number_duplication", 0x250F: "memory_error",
    0x2510: "sysmac_bus_terminator_missing", 0x2601: "no_protection",
    0x2602: "incorrect_password", 0x2604: "protected", 0x2605: "service_already_executing",
    0x2606: "service_stopped", 0x2607: "no_execution_right", 0x2608: "settings_not_complete",
    0x2609: "necessary_items_not_set", 0x260A: "number_already_defined",
    0x260B: "error_will_not_clear", 0x3001: "no_access_right", 0x4001: "service_aborted",
}
FINS_RUN_MODES = {0x01: "debug", 0x02: "monitor", 0x04: "run"}
FINS_CPU_MODES = {0x00: "program", 0x02: "monitor", 0x04: "run"}
FINS_CPU_STATUS = {0x00: "stop", 0x01: "run", 0x80: "standby"}

A_BAD_MAGIC = "omron_fins.bad_magic"
A_LENGTH = "omron_fins.invalid_length"
A_UNKNOWN_COMMAND = "omron_fins.unknown_command"
A_TRUNCATED = "omron_fins.truncated"
A_TCP_ERROR = "omron_fins.tcp_error"

_TCP = struct.Struct(">4sIII")
_HDR = struct.Struct(">BBBBBBBBBBH")
_H = struct.Struct(">H")
_AREA = struct.Struct(">BHBH")            # area, word address, bit, count
_PARAM = struct.Struct(">HHH")            # parameter area, begin word, count
_PROGRAM = struct.Struct(">HIH")          # program number, begin word, count
_WORDS = tuple(struct.Struct(f">{i}H") for i in range(FINS_MAX_VALUES + 1))

Fields = dict[str, Any]


def _bcd(b: int) -> int:
    return (b >> 4) * 10 + (b & 0x0F)


def _clock(b: bytes, off: int, end: int, f: Fields) -> None:
    """W227 5-3-16/17: year, month, day, hour, minute, second (BCD), optional day of week."""
    if end - off < 6:
        return
    y, mo, d, hh, mi, ss = (_bcd(x) for x in b[off:off + 6])
    f["clock"] = f"{2000 + y if y < 70 else 1900 + y:04d}-{mo:02d}-{d:02d}T{hh:02d}:{mi:02d}:{ss:02d}"


def _words(b: bytes, off: int, end: int) -> list[int]:
    n = min((end - off) // 2, FINS_MAX_VALUES)
    return list(_WORDS[n].unpack_from(b, off))


def _text(b: bytes, off: int, n: int) -> str:
    return b[off:off + n].split(b"\0", 1)[0].decode("latin-1").strip()


def _area(f: Fields, code: int, an: list[str] | None = None) -> None:
    f["memory_area_code"] = code
    f["memory_area"] = FINS_MEMORY_AREAS.get(code, "unknown")


def _request(code: int, b: bytes, off: int, end: int, f: Fields, an: list[str]) -> None:
    """Command parameters (W227 5-3)."""
    n = end - off
    if code in (0x0101, 0x0102, 0x0103):
        if n < 6:
            an.append(A_LENGTH)
            return
        area, addr, bit, count = _AREA.unpack_from(b, off)
        _area(f, area)
        f.update(address=addr, bit=bit, count=count)
        if code == 0x0101 and n != 6:
            an.append(A_LENGTH)
        elif code != 0x0101 and area not in FINS_BIT_AREAS:
            f["values"] = _words(b, off + 6, end)
    elif code == 0x0104:
        items = []
        for p in range(off, end - 3, 4):
            area, addr, bit = b[p], _H.unpack_from(b, p + 1)[0], b[p + 3]
            if len(items) < FINS_MAX_ITEMS:
                items.append({"memory_area_code": area,
                              "memory_area": FINS_MEMORY_AREAS.get(area, "unknown"),
                              "address": addr, "bit": bit})
        f["items"] = items
        if n % 4 or not n:
            an.append(A_LENGTH)
    elif code == 0x0105:
        if n != 10:
            an.append(A_LENGTH)
        if n >= 10:
            _area(f, b[off])
            f["address"], f["bit"] = _H.unpack_from(b, off + 1)[0], b[off + 3]
            f["dst_memory_area_code"] = b[off + 4]
            f["dst_memory_area"] = FINS_MEMORY_AREAS.get(b[off + 4], "unknown")
            f["dst_address"], f["dst_bit"] = _H.unpack_from(b, off + 5)[0], b[off + 7]
            f["count"] = _H.unpack_from(b, off + 8)[0]
    elif code in (0x0201, 0x0202, 0x0203):
        if n < 6:
            an.append(A_LENGTH)
            return
        f["parameter_area_code"], f["begin_word"], f["count"] = _PARAM.unpack_from(b, off)
    elif code in (0x0306, 0x0307):
        if n < 8:
            an.append(A_LENGTH)
            return
        f["program_number"], f["begin_word"], f["count"] = _PROGRAM.unpack_from(b, off)
    elif code == 0x0401:
        if n >= 2:
            f["program_number"] = _H.unpack_from(b, off)[0]
        if n >= 3:
            f["mode_code"] = b[off + 2]
            f["mode"] = FINS_RUN_MODES.get(b[off + 2], "unknown")
    elif code == 0x0501:
        if n:
            f["data_code"] = b[off]
    elif code == 0x0702:
        _clock(b, off, end, f)
        if n not in (5, 6, 7):
            an.append(A_LENGTH)


def _has_model(req: Fields | None, n: int) -> bool:
    """5-3-9: data code 00 returns model, version, system use and area data (92 octets), 01
    the CPU bus unit configuration, remote I/O data and PC status (67 octets), no data code
    both (159): the length decides, the request's data code where the length cannot."""
    if n >= FINS_CONTROLLER_DATA_00 or n == FINS_CONTROLLER_DATA_01:
        return n != FINS_CONTROLLER_DATA_01
    return req is None or req.get("data_code") != 1


def _response(code: int, b: bytes, off: int, end: int, f: Fields, req: Fields | None,
              an: list[str]) -> dict[str, Any] | None:
    """Response data (W227 5-3); returns the sender's identity where it reveals one."""
    if code == 0x0101 and req is not None and req.get("memory_area_code") not in FINS_BIT_AREAS:
        f["values"] = _words(b, off, end)
    elif code == 0x0501 and end - off >= 40 and _has_model(req, end - off):
        # Controller model (20 octets), controller version (20), system use (40), area data
        model, version = _text(b, off, 20), _text(b, off + 20, 20)
        f["controller_model"], f["controller_version"] = model, version
        ident = {k: v for k, v in (("model", model), ("firmware", version)) if v}
        if ident:
            ident["vendor"] = "OMRON"
        return ident or None
    elif code == 0x0601 and end - off >= 2:
        f["status_code"], f["mode_code"] = b[off], b[off + 1]
        f["status"] = FINS_CPU_STATUS.get(b[off], "unknown")
        f["mode"] = FINS_CPU_MODES.get(b[off + 1], "unknown")
    elif code == 0x0701:
        _clock(b, off, end, f)
    return None


class OmronFINSSession(Session):
    """Per-flow state: requests waiting for their response, keyed by SID and nodes."""

    def __init__(self, limits: Limits) -> None:
        self.max_pending = max(0, limits.max_pending)
        self.pending: dict[tuple[int, int, int], Fields] = {}

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        f: Fields = {}
        an: list[str] = []
        off = 0
        end = len(pdu)
        if end >= 8 and (pdu[:4] == FINS_MAGIC or _tcp_shaped(pdu)):
            if end < FINS_TCP_HEADER_LEN:
                return [Message("omron_fins", f, None, (A_TRUNCATED,), "truncated")]
            magic, length, cmd, err = _TCP.unpack_from(pdu)
            if magic != FINS_MAGIC:
                an.append(A_BAD_MAGIC)
            f.update(tcp_command=cmd, tcp_command_name=FINS_TCP_COMMANDS.get(cmd, "unknown"),
                     tcp_error_code=err)
            if err:
                an.append(A_TCP_ERROR)
            if length + 8 != end:
                an.append(A_LENGTH if length + 8 < end else A_TRUNCATED)
                end = min(end, length + 8)
            off = FINS_TCP_HEADER_LEN
            if cmd != 2:
                return [self._handshake(pdu, off, end, cmd, f, an, from_client)]
        if end - off < FINS_HEADER_LEN:
            an.append(A_TRUNCATED)
            return [Message("omron_fins", f, None, tuple(dict.fromkeys(an)), "truncated")]
        if end - off > FINS_MAX_FRAME:
            an.append(A_LENGTH)
        icf, rsv, gct, dna, da1, da2, sna, sa1, sa2, sid, code = _HDR.unpack_from(pdu, off)
        response = bool(icf & FINS_ICF_RESPONSE)
        name = FINS_COMMANDS.get(code)
        f.update(icf=icf, gateway=bool(icf & FINS_ICF_GATEWAY), is_response=response,
                 response_required=not icf & FINS_ICF_NO_RESPONSE, gct=gct, dst_net=dna,
                 dst_node=da1, dst_unit=da2, src_net=sna, src_node=sa1, src_unit=sa2, sid=sid,
                 command_code=code, command=name or "unknown")
        if name is None:
            an.append(A_UNKNOWN_COMMAND)
        off += FINS_HEADER_LEN
        kind = name or "unknown"
        identity = None
        if response:
            # The response swaps the addresses of its request.
            req = self._paired(sid, sa1, da1, code)
            if req is not None:
                for k in ("memory_area_code", "memory_area", "address", "bit", "count",
                          "data_code"):
                    if k in req and k not in f:
                        f[k] = req[k]
            if end - off < 2:
                an.append(A_LENGTH)
            else:
                ec = f["end_code"] = _H.unpack_from(pdu, off)[0]
                f["end_status"] = FINS_END_CODES.get(ec & 0x7F3F, "unknown")
                if ec & 0x7F3F and ec & 0x7F3F != 0x0001:
                    kind += "_exception"
                identity = _response(code, pdu, off + 2, end, f, req, an)
        else:
            _request(code, pdu, off, end, f, an)
            if not icf & FINS_ICF_NO_RESPONSE and self.max_pending:
                pending = self.pending
                key = (sid, sa1, da1)
                pending.pop(key, None)
                if len(pending) >= self.max_pending:
                    del pending[next(iter(pending))]
                pending[key] = f
        anomalies = () if not an else tuple(dict.fromkeys(an))
        return [Message("omron_fins", f, not response, anomalies, kind, identity)]

    def _paired(self, sid: int, node: int, peer: int, code: int) -> Fields | None:
        """The request a response answers: same SID with the nodes swapped; failing that
        (some gateways rewrite the SID) the oldest pending request of the same command."""
        pending = self.pending
        req = pending.get((sid, node, peer))
        key = (sid, node, peer)
        if req is None or req.get("command_code") != code:
            key = next((k for k, v in pending.items() if v.get("command_code") == code), None)
            if key is None:
                return None
        return pending.pop(key)

    def _handshake(self, b: bytes, off: int, end: int, cmd: int, f: Fields, an: list[str],
                   from_client: bool) -> Message:
        """W421 7: node address data send (client: its node, 0 = assign; server: both)."""
        n = end - off
        if cmd == 0:
            if n != 4:
                an.append(A_LENGTH)
            if n >= 4:
                f["client_node"] = struct.unpack_from(">I", b, off)[0]
        elif cmd == 1:
            if n != 8:
                an.append(A_LENGTH)
            if n >= 8:
                f["client_node"], f["server_node"] = struct.unpack_from(">II", b, off)
        elif cmd not in FINS_TCP_COMMANDS:
            an.append(A_UNKNOWN_COMMAND)
        kind = "node_address_data_send" if cmd in (0, 1) else FINS_TCP_COMMANDS.get(cmd,
                                                                                    "unknown")
        if f.get("tcp_error_code"):
            kind += "_exception"
        anomalies = () if not an else tuple(dict.fromkeys(an))
        return Message("omron_fins", f, cmd == 0 if cmd in (0, 1) else None, anomalies, kind)

    def close(self, now: float) -> list[Message]:
        self.pending.clear()
        return []


def _tcp_shaped(data: bytes) -> bool:
    """A FINS/TCP frame with a damaged magic: length and command still make sense."""
    if len(data) < FINS_TCP_HEADER_LEN:
        return False
    _, length, cmd, err = _TCP.unpack_from(data)
    return 8 <= length <= FINS_MAX_FRAME + 8 and cmd in FINS_TCP_COMMANDS and err < 0x100


class OmronFINSDecoder(Decoder):
    """FINS over UDP (bare frames) and TCP (FINS/TCP framing), port 9600."""

    def probe(self, data: bytes) -> bool:
        if data[:4] == FINS_MAGIC:
            return len(data) < 16 or _tcp_shaped(data)
        # A bare FINS frame: ICF with its reserved bits 1-5 clear, RSV 0, GCT <= 7, a known
        # command code.
        return (len(data) >= FINS_HEADER_LEN and not data[0] & 0x3E and data[1] == 0
                and data[2] <= 7 and _H.unpack_from(data, 10)[0] in FINS_COMMANDS)

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        off = 0
        n = len(data)
        while n - off >= 8:
            if data[off:off + 4] != FINS_MAGIC:
                # A damaged magic is framed (feed reports it) only if the rest of the header
                # is a FINS/TCP header; anything else is junk to resynchronise over.
                if n - off < FINS_TCP_HEADER_LEN or not _tcp_shaped(data[off:off + 16]):
                    return (out, off) if out else ([], -1)
            length = struct.unpack_from(">I", data, off + 4)[0]
            if not 8 <= length <= FINS_SPLIT_MAX:
                return (out, off) if out else ([], -1)
            stop = off + 8 + length
            if stop > n:
                break
            out.append(bytes(data[off:stop]))
            off = stop
        if not out and 4 <= n - off < 8 and data[off:off + 4] != FINS_MAGIC:
            return [], -1
        return out, off

    def session(self, limits: Limits) -> OmronFINSSession:
        return OmronFINSSession(limits)


DECODER = OmronFINSDecoder(name="omron_fins", tcp_ports=frozenset({FINS_PORT}),
                           udp_ports=frozenset({FINS_PORT}))
