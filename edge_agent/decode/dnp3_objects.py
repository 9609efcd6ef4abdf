"""DNP3 application objects: object headers, qualifiers, the object library and point values.

Spec: IEEE Std 1815-2012, clause 4 (object headers: group, variation, qualifier with object
prefix code and range specifier code) and Annex A (the object library: every group and
variation, its size and field layout); clause 7 and A.45 for the secure authentication objects
(group 120). Every multi-byte field is little-endian; DNP3 time is a 48-bit count of
milliseconds since 1970-01-01 UTC.

Used by :mod:`edge_agent.decode.dnp3`; this module holds no per-flow state. Point values are
decoded for the first ``DNP3_MAX_POINTS`` objects of each header; the rest are skipped by size.
Flag octets are emitted raw as ``flags``: bit 0 online, 1 restart, 2 comm_lost, 3 remote_forced,
4 local_forced, bits 5-6 per group (chatter_filter, rollover/discontinuity, over_range/
reference_err), bit 7 the state of binaries.
"""
from __future__ import annotations

import math
import struct
from typing import Any, Callable

DNP3_MAX_POINTS = 32          # point values kept per object header
DNP3_MAX_TEXT = 64            # characters kept of a file name, octet string or attribute

A_UNKNOWN_OBJECT = "dnp3.unknown_object"
A_TRUNCATED_OBJECT = "dnp3.truncated_object"
A_INVALID_QUALIFIER = "dnp3.invalid_qualifier"

# Clause 4 object prefix codes: octets of the prefix, and whether it is a size (else an index).
DNP3_PREFIX_WIDTH = (0, 1, 2, 4, 1, 2, 4)
_PREFIX = {1: struct.Struct("<B").unpack_from, 2: struct.Struct("<H").unpack_from,
           4: struct.Struct("<I").unpack_from}
# Clause 4 range specifier codes: code -> (octets per field, fields, is start/stop range)
DNP3_RANGE_CODES: dict[int, tuple[int, int, bool]] = {
    0x0: (1, 2, True), 0x1: (2, 2, True), 0x2: (4, 2, True),     # start-stop indices
    0x3: (1, 2, True), 0x4: (2, 2, True), 0x5: (4, 2, True),     # virtual addresses (obsolete)
    0x6: (0, 0, False),                                          # all objects, no range field
    0x7: (1, 1, False), 0x8: (2, 1, False), 0x9: (4, 1, False),  # object count
    0xB: (1, 1, False),                                          # free format: count
}
_RANGE = {(1, 2): struct.Struct("<BB").unpack_from, (2, 2): struct.Struct("<HH").unpack_from,
          (4, 2): struct.Struct("<II").unpack_from, (1, 1): struct.Struct("<B").unpack_from,
          (2, 1): struct.Struct("<H").unpack_from, (4, 1): struct.Struct("<I").unpack_from}

# Request functions whose objects carry values (clause 4 function code descriptions); in the
# others (read, freeze, enable/disable unsolicited, assign class ...) objects are headers only,
# unless their qualifier prefixes each object with its size.
DNP3_DATA_REQUESTS = frozenset({2, 3, 4, 5, 6, 11, 12, 16, 17, 18, 25, 26, 27, 28, 29, 30, 31,
                                32, 33})

# Annex A group names; variation 0 ("any variation", requests only) is "<group>_any".
_GROUPS: dict[int, str] = {
    0: "device_attribute", 1: "binary_input", 2: "binary_input_event", 3: "double_bit_input",
    4: "double_bit_input_event", 10: "binary_output", 11: "binary_output_event", 12: "crob",
    13: "binary_output_command_event", 20: "counter", 21: "frozen_counter",
    22: "counter_event", 23: "frozen_counter_event", 30: "analog_input",
    31: "frozen_analog_input", 32: "analog_input_event", 33: "frozen_analog_input_event",
    34: "analog_input_deadband", 40: "analog_output_status", 41: "analog_output",
    42: "analog_output_event", 43: "analog_output_command_event", 50: "time_and_date",
    51: "cto", 52: "time_delay", 60: "class_data", 70: "file", 80: "internal_indications",
    81: "device_storage", 82: "device_profile", 83: "data_set_registration",
    85: "data_set_prototype", 86: "data_set_descriptor", 87: "data_set_present_value",
    88: "data_set_snapshot", 90: "application_identifier", 91: "activate_config_status",
    100: "floating_point", 101: "bcd", 102: "unsigned_integer", 110: "octet_string",
    111: "octet_string_event", 112: "virtual_terminal_output", 113: "virtual_terminal_event",
    120: "authentication", 121: "security_statistic", 122: "security_statistic_event",
}
_CNT = ("32bit_with_flag", "16bit_with_flag", "delta_32bit_with_flag", "delta_16bit_with_flag")
_EVT = ("32bit_without_time", "16bit_without_time", "32bit_with_time", "16bit_with_time",
        "single_float_without_time", "double_float_without_time", "single_float_with_time",
        "double_float_with_time")
_VARIATIONS: dict[int, tuple[str, ...]] = {
    1: ("packed", "with_flags"),
    2: ("without_time", "with_absolute_time", "with_relative_time"),
    3: ("packed", "with_flags"),
    4: ("without_time", "with_absolute_time", "with_relative_time"),
    10: ("packed", "status_with_flags"),
    11: ("without_time", "with_time"),
    12: ("", "pattern_control_block", "pattern_mask"),
    13: ("without_time", "with_time"),
    20: _CNT + ("32bit_without_flag", "16bit_without_flag", "delta_32bit_without_flag",
                "delta_16bit_without_flag"),
    21: _CNT + ("32bit_with_flag_and_time", "16bit_with_flag_and_time",
                "delta_32bit_with_flag_and_time", "delta_16bit_with_flag_and_time",
                "32bit_without_flag", "16bit_without_flag", "delta_32bit_without_flag",
                "delta_16bit_without_flag"),
    22: _CNT + ("32bit_with_flag_and_time", "16bit_with_flag_and_time",
                "delta_32bit_with_flag_and_time", "delta_16bit_with_flag_and_time"),
    23: _CNT + ("32bit_with_flag_and_time", "16bit_with_flag_and_time",
                "delta_32bit_with_flag_and_time", "delta_16bit_with_flag_and_time"),
    30: ("32bit_with_flag", "16bit_with_flag", "32bit_without_flag", "16bit_without_flag",
         "single_float_with_flag", "double_float_with_flag"),
    31: ("32bit_with_flag", "16bit_with_flag", "32bit_with_time_of_freeze",
         "16bit_with_time_of_freeze", "32bit_without_flag", "16bit_without_flag",
         "single_float_with_flag", "double_float_with_flag"),
    32: _EVT, 33: _EVT, 42: _EVT, 43: _EVT,
    34: ("16bit", "32bit", "single_float"),
    40: ("32bit_with_flag", "16bit_with_flag", "single_float_with_flag",
         "double_float_with_flag"),
    41: ("32bit", "16bit", "single_float", "double_float"),
    50: ("", "with_interval", "last_recorded", "indexed_absolute_and_long_interval"),
    51: ("synchronized", "unsynchronized"),
    52: ("coarse", "fine"),
    60: ("class_0", "class_1", "class_2", "class_3"),
    70: ("identifier", "authentication", "command", "command_status", "transport",
         "transport_status", "descriptor", "specification_string"),
    80: ("",),
    81: ("",), 82: ("",),
    83: ("private_registration_object", "private_registration_object_descriptor"),
    85: ("with_uuid",), 86: ("contents", "characteristics", "point_index_attributes"),
    87: ("",), 88: ("",), 90: ("",), 91: ("",),
    100: ("short", "long", "extended"),
    101: ("small", "medium", "large"),
    102: ("8bit",),
    120: ("challenge", "reply", "aggressive_mode_request", "session_key_status_request",
          "session_key_status", "session_key_change", "error", "user_certificate", "mac",
          "user_status_change", "update_key_change_request", "update_key_change_reply",
          "update_key_change", "update_key_change_signature",
          "update_key_change_confirmation"),
    121: ("",), 122: ("without_time", "with_time"),
}
# Special cases where the generic "<group>_<variation>" reads badly.
_NAME_OVERRIDES: dict[tuple[int, int], str] = {
    (12, 1): "crob", (60, 1): "class_0_data", (60, 2): "class_1_data", (60, 3): "class_2_data",
    (60, 4): "class_3_data", (50, 1): "time_and_date",
}

# A.1 device attribute variations (group 0), names after the IEEE 1815-2012 table.
DNP3_ATTRIBUTES: dict[int, str] = {
    196: "config_id", 197: "config_version", 198: "config_build_date",
    199: "config_last_change_date", 200: "config_digest", 201: "config_digest_algorithm",
    202: "master_resource_id", 203: "device_location_altitude",
    204: "device_location_longitude", 205: "device_location_latitude",
    206: "user_assigned_secondary_operator_name", 207: "user_assigned_primary_operator_name",
    208: "user_assigned_system_name", 209: "secure_auth_version",
    210: "number_of_security_statistics_per_association",
    211: "user_specific_attributes", 212: "number_of_master_defined_data_set_prototypes",
    213: "number_of_outstation_defined_data_set_prototypes",
    214: "number_of_master_defined_data_sets", 215: "number_of_outstation_defined_data_sets",
    216: "max_binary_outputs_per_request", 217: "local_timing_accuracy",
    218: "duration_of_time_accuracy", 219: "supports_analog_output_events",
    220: "max_analog_output_index", 221: "number_of_analog_outputs",
    222: "supports_binary_output_events", 223: "max_binary_output_index",
    224: "number_of_binary_outputs", 225: "supports_frozen_counter_events",
    226: "supports_frozen_counters", 227: "supports_counter_events", 228: "max_counter_index",
    229: "number_of_counters", 230: "supports_frozen_analog_inputs",
    231: "supports_analog_input_events", 232: "max_analog_input_index",
    233: "number_of_analog_inputs", 234: "supports_double_bit_input_events",
    235: "max_double_bit_input_index", 236: "number_of_double_bit_inputs",
    237: "supports_binary_input_events", 238: "max_binary_input_index",
    239: "number_of_binary_inputs", 240: "max_transmit_fragment_size",
    241: "max_receive_fragment_size", 242: "device_manufacturer_software_version",
    243: "device_manufacturer_hardware_version", 244: "user_assigned_owner_name",
    245: "user_assigned_location", 246: "user_assigned_id", 247: "user_assigned_device_name",
    248: "device_serial_number", 249: "device_subset_and_conformance",
    250: "product_name_and_model", 252: "device_manufacturer_name",
    254: "all_attributes_request", 255: "list_of_attribute_variations",
}
# What each attribute says about the outstation that reports it, in IDENTITY_KEYS vocabulary.
DNP3_IDENTITY_ATTRIBUTES: dict[int, str] = {
    242: "firmware", 243: "hardware", 245: "location", 247: "name", 248: "serial",
    250: "model", 252: "vendor",
}
# A.1 attribute data type codes
DNP3_ATTRIBUTE_TYPES: dict[int, str] = {
    1: "vstr", 2: "uint", 3: "int", 4: "flt", 5: "ostr", 6: "bstr", 7: "time",
    254: "u8bs8list", 255: "u8bs8exlist",
}

# A.8 (g12v1) control code fields and A.? status codes shared by g12, g13, g41 and g43.
DNP3_OP_TYPES = ("nul", "pulse_on", "pulse_off", "latch_on", "latch_off")
DNP3_TCC = ("nul", "close", "trip", "reserved")
DNP3_CONTROL_STATUS: dict[int, str] = {
    0: "success", 1: "timeout", 2: "no_select", 3: "format_error", 4: "not_supported",
    5: "already_active", 6: "hardware_error", 7: "local", 8: "too_many_objs",
    9: "not_authorized", 10: "automation_inhibit", 11: "processing_limited",
    12: "out_of_range", 13: "downstream_local", 14: "already_complete", 15: "blocked",
    16: "canceled", 17: "blocked_other_master", 18: "downstream_fail",
    126: "reserved", 127: "undefined",
}
# A.42 (group 70) file status codes and operational modes
DNP3_FILE_STATUS: dict[int, str] = {
    0: "success", 1: "permission_denied", 2: "invalid_mode", 3: "file_not_found",
    4: "file_locked", 5: "too_many_open", 6: "invalid_handle", 7: "write_block_size",
    8: "comm_lost", 9: "cannot_abort", 16: "not_opened", 17: "handle_expired",
    18: "buffer_overrun", 19: "fatal", 20: "block_seq", 255: "undefined",
}
DNP3_FILE_MODES = ("null", "read", "write", "append")
DNP3_FILE_TYPES = ("directory", "simple_file")
# A.45 (group 120) error codes, key status and user status change operations
DNP3_AUTH_ERRORS: dict[int, str] = {
    1: "authentication_failed", 2: "unexpected_response", 3: "no_response",
    4: "aggressive_mode_not_supported", 5: "mac_algorithm_not_supported",
    6: "key_wrap_algorithm_not_supported", 7: "authorization_failed",
    8: "update_key_change_method_not_permitted", 9: "invalid_signature",
    10: "invalid_certification_data", 11: "unknown_user",
    12: "max_session_key_status_requests_exceeded",
}
DNP3_KEY_STATUS = ("", "ok", "not_init", "comm_fail", "auth_fail")
DNP3_USER_OPERATIONS = ("", "add", "delete", "change")

Point = dict[str, Any]
FixedDecoder = Callable[[bytes, int, int], Point]     # buffer, offset, point index
VarDecoder = Callable[[bytes, int, int, list[str]], Point]


def object_name(group: int, variation: int) -> str:
    """The Annex A name of a group and variation, or "unknown"."""
    special = _NAME_OVERRIDES.get((group, variation))
    if special:
        return special
    base = _GROUPS.get(group)
    if base is None:
        return "unknown"
    if group == 0:
        return DNP3_ATTRIBUTES.get(variation, base)
    if variation == 0:
        return base + "_any"
    if group in (110, 111, 112, 113):
        return base
    names = _VARIATIONS.get(group, ())
    if variation > len(names):
        return "unknown"
    suffix = names[variation - 1]
    return f"{base}_{suffix}" if suffix else base


DNP3_OBJECT_NAMES: dict[tuple[int, int], str] = {
    (g, v): object_name(g, v) for g in _GROUPS for v in range(0, 256)
    if object_name(g, v) != "unknown"}

# Annex A fixed object sizes in octets. Packed (bit-string) objects are in DNP3_PACKED_BITS;
# groups 110-113 are as long as their variation; group 0 and the free-format objects (70, 83,
# 85-91, most of 120) carry their own lengths.
DNP3_OBJECT_SIZES: dict[tuple[int, int], int] = {
    (1, 2): 1, (2, 1): 1, (2, 2): 7, (2, 3): 3, (3, 2): 1, (4, 1): 1, (4, 2): 7, (4, 3): 3,
    (10, 2): 1, (11, 1): 1, (11, 2): 7, (12, 1): 11, (12, 2): 11, (13, 1): 1, (13, 2): 7,
    (20, 1): 5, (20, 2): 3, (20, 3): 5, (20, 4): 3, (20, 5): 4, (20, 6): 2, (20, 7): 4,
    (20, 8): 2,
    (21, 1): 5, (21, 2): 3, (21, 3): 5, (21, 4): 3, (21, 5): 11, (21, 6): 9, (21, 7): 11,
    (21, 8): 9, (21, 9): 4, (21, 10): 2, (21, 11): 4, (21, 12): 2,
    **{(g, v): s for g in (22, 23) for v, s in zip(range(1, 9), (5, 3, 5, 3, 11, 9, 11, 9))},
    (30, 1): 5, (30, 2): 3, (30, 3): 4, (30, 4): 2, (30, 5): 5, (30, 6): 9,
    (31, 1): 5, (31, 2): 3, (31, 3): 11, (31, 4): 9, (31, 5): 4, (31, 6): 2, (31, 7): 5,
    (31, 8): 9,
    **{(g, v): s for g in (32, 33, 42, 43)
       for v, s in zip(range(1, 9), (5, 3, 11, 9, 5, 9, 11, 15))},
    (34, 1): 2, (34, 2): 4, (34, 3): 4,
    (40, 1): 5, (40, 2): 3, (40, 3): 5, (40, 4): 9,
    (41, 1): 5, (41, 2): 3, (41, 3): 5, (41, 4): 9,
    (50, 1): 6, (50, 2): 10, (50, 3): 6, (50, 4): 11, (51, 1): 6, (51, 2): 6,
    (52, 1): 2, (52, 2): 2, (86, 2): 1,
    (101, 1): 2, (101, 2): 4, (101, 3): 8, (102, 1): 1,
    (120, 3): 6, (120, 4): 2, (121, 1): 7, (122, 1): 7, (122, 2): 13,
}
DNP3_PACKED_BITS: dict[tuple[int, int], int] = {
    (1, 1): 1, (3, 1): 2, (10, 1): 1, (12, 3): 1, (80, 1): 1,
}
DNP3_STRING_GROUPS = frozenset({110, 111, 112, 113})   # A.49-A.52: size = variation


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
