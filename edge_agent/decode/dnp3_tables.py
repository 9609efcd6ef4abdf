"""DNP3 object library tables: qualifier codes, group and variation names, sizes, value names.

Spec: IEEE Std 1815-2012, clause 4 (object prefix and range specifier codes, the request
functions whose objects carry values) and Annex A (the object library: the name and size of
every group and variation; A.1 device attributes, A.8/A.24/A.26 control status, A.42 file
status, A.45 secure authentication codes). Data only, kept apart from the parsers in
``dnp3_objects.py``.
"""
from __future__ import annotations

# Clause 4 object prefix codes: octets of the prefix, and whether it is a size (else an index).
DNP3_PREFIX_WIDTH = (0, 1, 2, 4, 1, 2, 4)
# Clause 4 range specifier codes: code -> (octets per field, fields, is start/stop range)
DNP3_RANGE_CODES: dict[int, tuple[int, int, bool]] = {
    0x0: (1, 2, True), 0x1: (2, 2, True), 0x2: (4, 2, True),     # start-stop indices
    0x3: (1, 2, True), 0x4: (2, 2, True), 0x5: (4, 2, True),     # virtual addresses (obsolete)
    0x6: (0, 0, False),                                          # all objects, no range field
    0x7: (1, 1, False), 0x8: (2, 1, False), 0x9: (4, 1, False),  # object count
    0xB: (1, 1, False),                                          # free format: count
}

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
