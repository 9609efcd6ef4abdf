"""Name tables of S7comm (the S7 protocol as documented by Wireshark's S7comm dissector and the
snap7 project): PDU types, functions, error codes, item syntax, memory areas, userdata groups
and sub-functions, SZL lists, and the codes the parser tests for. Data only, kept apart from the
parsers in ``s7comm.py``.
"""
from __future__ import annotations

# ROSCTR (Wireshark: rosctr_names); is_request per ROSCTR
S7COMM_ROSCTR: dict[int, str] = {1: "job", 2: "ack", 3: "ack_data", 7: "userdata"}
ROSCTR_JOB, ROSCTR_ACK, ROSCTR_ACK_DATA, ROSCTR_USERDATA = 1, 2, 3, 7

# Parameter function codes (Wireshark: param_functionnames; snap7 "S7 protocol" functions)
S7COMM_FUNCS: dict[int, str] = {
    0x00: "cpu_services", 0xF0: "setup_communication", 0x04: "read_var", 0x05: "write_var",
    0x1A: "request_download", 0x1B: "download_block", 0x1C: "download_ended",
    0x1D: "start_upload", 0x1E: "upload", 0x1F: "end_upload", 0x28: "plc_control",
    0x29: "plc_stop",
}
FUNC_SETUP, FUNC_READ, FUNC_WRITE, FUNC_PI, FUNC_STOP = 0xF0, 0x04, 0x05, 0x28, 0x29
FUNC_BLOCK_CONTROL = frozenset({0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F})


RETURN_SUCCESS, RETURN_RESERVED = 0xFF, 0x00

SYNTAX_S7ANY, SYNTAX_DBREAD, SYNTAX_DRIVEESANY = 0x10, 0xB0, 0xA2
SYNTAX_NCK = frozenset({0x82, 0x83, 0x84})

AREA_DB, AREA_DI = 0x84, 0x85
AREA_NUMBERED = frozenset({0x1C, 0x1D, 0x1E, 0x1F})   # counters/timers: address is a number

# Data item transport sizes whose length counts bits rather than bytes (Wireshark: BBIT,
# BBYTE, BINT)
S7COMM_LENGTH_IN_BITS = frozenset({3, 4, 5})

# Userdata: type nibble, function groups and their subfunctions (Wireshark:
# userdata_type_names, userdata_functiongroup_names, userdata_*_subfunc_names)
S7COMM_UD_TYPES: dict[int, str] = {0x0: "push", 0x4: "request", 0x8: "response"}
UD_PUSH, UD_REQUEST, UD_RESPONSE = 0x0, 0x4, 0x8
GROUP_MODE, GROUP_BLOCK, GROUP_CPU, GROUP_TIME = 0x0, 0x3, 0x4, 0x7
SUB_READ_SZL, SUB_LIST_BLOCKS, SUB_LIST_TYPE, SUB_BLOCK_INFO = 0x01, 0x01, 0x02, 0x03

S7COMM_FILESYSTEMS: dict[str, str] = {"P": "passive", "A": "active", "B": "active_and_passive"}

PI_BLOCK_SERVICES = frozenset({"_INSE", "_INS2", "_DELE"})

SZL_MODULE_ID, SZL_COMPONENT_ID, SZL_MODES = 0x11, 0x1C, 0x0424
SZL_MODULE_RECORD = 28           # index + 20-char order number + BGTyp + Ausbg + Ausbe
SZL_COMPONENT_RECORD = 34        # index + 32 octets
# W#16#xy11 record indexes: module, basic hardware, basic firmware
SZL_INDEX_MODULE, SZL_INDEX_HARDWARE, SZL_INDEX_FIRMWARE = 0x0001, 0x0006, 0x0007
SZL_INDEX_MANUFACTURER = 0x09    # manufacturer (PROFIBUS) id + profile, binary
SIEMENS_MANUFACTURER_ID = 0x002A

# The common 16-bit error codes (class << 8 | code; Wireshark: param_errcode_names)
S7COMM_ERRORS: dict[int, str] = {
    0x0000: "no_error", 0x0110: "invalid_block_number", 0x0111: "invalid_request_length",
    0x0112: "invalid_parameter", 0x0113: "invalid_block_type", 0x0114: "block_not_found",
    0x0115: "block_already_exists", 0x0116: "block_write_protected",
    0x0119: "incorrect_password", 0x011C: "protocol_error", 0x0120: "end_of_block_list",
    0x8001: "service_not_possible_in_block_status", 0x8104: "service_not_implemented",
    0x8301: "insufficient_memory", 0x8304: "no_further_upload_possible",
    0x8305: "function_not_available", 0x8401: "invalid_service_sequence",
    0x8404: "function_cannot_be_performed", 0x8500: "wrong_frames",
    0x8503: "service_cancelled", 0x8701: "object_addressing_error",
    0x8702: "service_not_supported", 0x8703: "access_denied", 0x8704: "object_damaged",
    0xD001: "illegal_job_number", 0xD041: "illegal_szl_id", 0xD081: "not_permitted_in_mode",
    0xD0A1: "not_permitted_in_protection_level", 0xD0AD: "mode_already_set",
    0xD201: "block_name_syntax_error", 0xD202: "function_parameter_syntax_error",
    0xD209: "block_not_found", 0xD20C: "ob_priority_class_missing",
    0xD20E: "no_further_block", 0xD210: "invalid_block_number",
    0xD241: "not_permitted_in_protection_level", 0xD602: "incorrect_password",
    0xD603: "connection_already_legitimized", 0xD604: "connection_already_enabled",
    0xD605: "no_password_set", 0xDC01: "invalid_date_or_time",
}

# Item return codes (Wireshark: s7comm_item_return_valuenames)
S7COMM_RETURN_CODES: dict[int, str] = {
    0x00: "reserved", 0x01: "hardware_fault", 0x03: "access_denied", 0x05: "invalid_address",
    0x06: "data_type_not_supported", 0x07: "data_type_inconsistent",
    0x0A: "object_does_not_exist", 0xFF: "success",
}

# Variable specification syntax ids (Wireshark: item_syntaxid_names)
S7COMM_SYNTAX_IDS: dict[int, str] = {
    0x10: "s7any", 0x11: "parameter_short", 0x12: "parameter_extended", 0x13: "pbc_r_id",
    0x15: "alarm_lockfree", 0x16: "alarm_ind", 0x19: "alarm_ack", 0x1A: "alarm_queryreq",
    0x1C: "notify_ind", 0x82: "nck", 0x83: "nck_metric", 0x84: "nck_inch",
    0xA2: "drive_es_any", 0xB0: "dbread", 0xB2: "s7_1200_symbolic",
}

# Memory areas (Wireshark: item_areanames) and the S7 address letter of each
S7COMM_AREAS: dict[int, tuple[str, str]] = {
    0x01: ("data_record", "RECORD"), 0x03: ("system_info_200", "SI"),
    0x05: ("system_flags_200", "SF"), 0x06: ("analog_inputs_200", "AI"),
    0x07: ("analog_outputs_200", "AO"), 0x80: ("peripheral", "P"), 0x81: ("inputs", "I"),
    0x82: ("outputs", "Q"), 0x83: ("flags", "M"), 0x84: ("db", "DB"), 0x85: ("di", "DI"),
    0x86: ("local", "L"), 0x87: ("previous_local", "V"), 0x1C: ("counters", "C"),
    0x1D: ("timers", "T"), 0x1E: ("iec_counters", "C"), 0x1F: ("iec_timers", "T"),
}

# Parameter item transport sizes (Wireshark: item_transportsizenames) and the address width
# letter each implies (X bit, B byte, W word, D double word)
S7COMM_TRANSPORT_SIZES: dict[int, tuple[str, str]] = {
    1: ("bit", "X"), 2: ("byte", "B"), 3: ("char", "B"), 4: ("word", "W"), 5: ("int", "W"),
    6: ("dword", "D"), 7: ("dint", "D"), 8: ("real", "D"), 9: ("date", "W"),
    10: ("tod", "D"), 11: ("time", "D"), 12: ("s5time", "W"), 15: ("date_and_time", "B"),
    28: ("counter", "W"), 29: ("timer", "W"), 30: ("iec_counter", "B"),
    31: ("iec_timer", "B"), 32: ("hs_counter", "B"),
}

S7COMM_UD_GROUPS: dict[int, str] = {
    0x0: "mode_transition", 0x1: "programmer_commands", 0x2: "cyclic_data",
    0x3: "block_functions", 0x4: "cpu_functions", 0x5: "security", 0x6: "pbc",
    0x7: "time_functions", 0xF: "nc_programming",
}

S7COMM_UD_SUBFUNCS: dict[int, dict[int, str]] = {
    # group 0: the subfunction is the mode the CPU enters
    0x0: {0x00: "stop", 0x01: "warm_restart", 0x02: "run", 0x03: "hot_restart", 0x04: "hold",
          0x06: "cold_restart", 0x09: "run_r", 0x0B: "link_up", 0x0C: "update"},
    0x1: {0x01: "block_status", 0x02: "variable_status", 0x03: "output_istack",
          0x04: "output_bstack", 0x05: "output_lstack", 0x06: "time_measurement",
          0x07: "force_selection", 0x08: "modify_variable", 0x09: "force",
          0x0A: "breakpoint", 0x0B: "exit_hold", 0x0C: "memory_reset", 0x0D: "disable_job",
          0x0E: "enable_job", 0x0F: "delete_job", 0x10: "read_job_list", 0x11: "read_job",
          0x12: "replace_job", 0x13: "block_status_v2", 0x16: "flash_led"},
    0x2: {0x01: "cyclic_transfer", 0x04: "unsubscribe", 0x05: "change_driven_transfer",
          0x07: "change_driven_transfer_modify", 0x08: "rdrec"},
    0x3: {0x01: "list_blocks", 0x02: "list_blocks_of_type", 0x03: "get_block_info"},
    0x4: {0x01: "read_szl", 0x02: "message_service", 0x03: "diagnostic_message",
          0x05: "alarm8_indication", 0x06: "notify_indication", 0x07: "alarm8_lock",
          0x08: "alarm8_unlock", 0x09: "scan_indication", 0x0B: "alarm_ack",
          0x0C: "alarm_ack_indication", 0x0D: "alarm8_lock_indication",
          0x0E: "alarm8_unlock_indication", 0x10: "ar_send_indication",
          0x11: "alarm_sq_indication", 0x12: "alarm_s_indication", 0x13: "alarm_query",
          0x16: "notify8_indication"},
    0x5: {0x01: "plc_password", 0x02: "clean_session"},
    0x6: {0x01: "bsend_brecv"},
    0x7: {0x01: "read_clock", 0x02: "set_clock", 0x03: "read_clock_following",
          0x04: "set_clock"},
    0xF: {0x01: "nc_request_download", 0x02: "nc_download_block",
          0x03: "nc_continue_download", 0x04: "nc_download_ended", 0x06: "nc_start_upload",
          0x07: "nc_upload", 0x08: "nc_continue_upload"},
}

# Block types as the two ASCII hex digits of file names and block lists (Wireshark:
# blocktype_names / subblktype_names)
S7COMM_BLOCK_TYPES: dict[int, str] = {
    0x08: "ob", 0x09: "cmod", 0x0A: "db", 0x0B: "sdb", 0x0C: "fc", 0x0D: "sfc", 0x0E: "fb",
    0x0F: "sfb",
}

# PI services of PLC control (ICSNPP consts.zeek s7comm_plc_control_services, snake case)
S7COMM_PI_SERVICES: dict[str, str] = {
    "_INSE": "activate_block", "_INS2": "activate_block", "_DELE": "delete_block",
    "P_PROGRAM": "start", "_MODU": "copy_ram_to_rom", "_GARB": "compress_memory",
    "_N_LOGIN_": "login", "_N_LOGOUT": "logout", "_N_CANCEL": "cancel_alarm",
    "_N_DASAVE": "copy_sram_to_flash", "_N_F_DELE": "delete_file", "_N_F_COPY": "copy_file",
    "_N_F_OPEN": "open_file", "_N_F_CLOS": "close_file", "_N_SELECT": "select_program",
    "_N_NEWPWD": "new_password", "_N_DELVAR": "delete_data_block",
}

# SZL ids by their list number (low byte) (Siemens SZL chapter; ICSNPP s7comm_szl_id)
S7COMM_SZL_LISTS: dict[int, str] = {
    0x00: "szl_ids", 0x11: "module_identification", 0x12: "cpu_characteristics",
    0x13: "user_memory_areas", 0x14: "system_areas", 0x15: "block_types",
    0x16: "priority_classes", 0x17: "sdb_list", 0x18: "max_io_configuration",
    0x19: "module_leds", 0x1C: "component_identification", 0x21: "interrupt_assignment",
    0x22: "interrupt_status", 0x23: "priority_classes", 0x24: "modes",
    0x25: "process_image_partitions", 0x31: "communication_capability",
    0x32: "communication_status", 0x33: "device_logon_list", 0x37: "ethernet_details",
    0x71: "h_cpu_group", 0x74: "module_leds", 0x75: "switched_dp_slaves",
    0x81: "start_information", 0x82: "start_events", 0x91: "module_status",
    0x92: "rack_status", 0x94: "rack_status", 0x95: "dp_master_system",
    0x96: "module_status_pn_dp", 0xA0: "diagnostic_buffer", 0xB1: "module_diagnostics",
    0xB2: "module_diagnostics_geographical", 0xB3: "module_diagnostics_logical",
    0xB4: "dp_slave_diagnostics",
}

# W#16#xy1C record indexes and the field each fills
S7COMM_COMPONENTS: dict[int, str] = {
    0x01: "automation_system_name", 0x02: "module_name", 0x03: "plant_designation",
    0x04: "copyright", 0x05: "serial_number", 0x07: "module_type_name",
    0x08: "memory_card_serial", 0x0A: "oem_id", 0x0B: "location_designation",
}

# W#16#0424 "bzu_id" low nibble: current operating mode
S7COMM_CPU_MODES: dict[int, str] = {
    0x1: "stop_update", 0x2: "stop_memory_reset", 0x3: "stop_self_init", 0x4: "stop",
    0x5: "startup", 0x7: "restart", 0x8: "run", 0xA: "hold", 0xD: "defect",
}
