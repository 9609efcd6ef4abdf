"""Name tables of CIP (ODVA "The CIP Networks Library", Vol 1 Appendices A-C, and Vol 2) and PCCC.

Data only, kept apart from the parsers (``cip.py``, ``cip_path.py``, ``cip_objects.py``): the
names, the codes the parsers test for, the bounds they share and their anomaly names. Vendor
ids follow ODVA's registry as published in Wireshark's CIP dissector and ICSNPP; see
tests/decode/test_cip.py.
"""
from __future__ import annotations

# Vol 1 Appendix A: common services
CIP_SERVICES: dict[int, str] = {
    0x01: "get_attributes_all", 0x02: "set_attributes_all", 0x03: "get_attribute_list",
    0x04: "set_attribute_list", 0x05: "reset", 0x06: "start", 0x07: "stop", 0x08: "create",
    0x09: "delete", 0x0A: "multiple_service_packet", 0x0D: "apply_attributes",
    0x0E: "get_attribute_single", 0x10: "set_attribute_single",
    0x11: "find_next_object_instance", 0x14: "error_response", 0x15: "restore", 0x16: "save",
    0x17: "nop", 0x18: "get_member", 0x19: "set_member", 0x1A: "insert_member",
    0x1B: "remove_member", 0x1C: "group_sync", 0x1D: "get_connection_point_member_list",
}

# Class specific services (Vol 1 3-5.5 Connection Manager, File object services; PCCC object per
# Rockwell 1756-PM020; Logix tag services per 1756-PM020, used on symbolic paths and Logix
# objects, so they are the reading for any class that is not one of the others).
CIP_CM_SERVICES: dict[int, str] = {
    0x4E: "forward_close", 0x52: "unconnected_send", 0x54: "forward_open",
    0x56: "get_connection_data", 0x57: "search_connection_data", 0x5A: "get_connection_owner",
    0x5B: "large_forward_open",
}

CIP_PCCC_SERVICES: dict[int, str] = {
    0x4B: "execute_pccc", 0x4C: "execute_dh_pccc", 0x4D: "execute_local_pccc",
}

CIP_FILE_SERVICES: dict[int, str] = {
    0x4B: "initiate_upload", 0x4C: "initiate_download", 0x4D: "initiate_partial_read",
    0x4E: "initiate_partial_write", 0x4F: "upload_transfer", 0x50: "download_transfer",
    0x51: "clear_file",
}

CIP_LOGIX_SERVICES: dict[int, str] = {
    0x4C: "read_tag", 0x4D: "write_tag", 0x4E: "read_modify_write_tag",
    0x52: "read_tag_fragmented", 0x53: "write_tag_fragmented",
    0x55: "get_instance_attribute_list",
}

# Vol 1 Appendix A object class codes (0x64-0xC7 are vendor specific: only the Rockwell Logix
# symbol/template/wall clock objects, which public tools document, are named).
CIP_CLASSES: dict[int, str] = {
    0x01: "identity", 0x02: "message_router", 0x03: "devicenet", 0x04: "assembly",
    0x05: "connection", 0x06: "connection_manager", 0x07: "register",
    0x08: "discrete_input_point", 0x09: "discrete_output_point", 0x0A: "analog_input_point",
    0x0B: "analog_output_point", 0x0E: "presence_sensing", 0x0F: "parameter",
    0x10: "parameter_group", 0x12: "group", 0x1D: "discrete_input_group",
    0x1E: "discrete_output_group", 0x1F: "discrete_group", 0x20: "analog_input_group",
    0x21: "analog_output_group", 0x22: "analog_group", 0x23: "position_sensor",
    0x24: "position_controller_supervisor", 0x25: "position_controller",
    0x26: "block_sequencer", 0x27: "command_block", 0x28: "motor_data",
    0x29: "control_supervisor", 0x2A: "ac_dc_drive", 0x2B: "acknowledge_handler",
    0x2C: "overload", 0x2D: "softstart", 0x2E: "selection", 0x30: "s_device_supervisor",
    0x31: "s_analog_sensor", 0x32: "s_analog_actuator", 0x33: "s_single_stage_controller",
    0x34: "s_gas_calibration", 0x35: "trip_point", 0x37: "file", 0x38: "s_partial_pressure",
    0x39: "safety_supervisor", 0x3A: "safety_validator", 0x3B: "safety_discrete_output_point",
    0x3C: "safety_discrete_output_group", 0x3D: "safety_discrete_input_point",
    0x3E: "safety_discrete_input_group", 0x3F: "safety_dual_channel_output",
    0x40: "s_sensor_calibration", 0x41: "event_log", 0x42: "motion_axis", 0x43: "time_sync",
    0x44: "modbus", 0x45: "originator_connection_list", 0x46: "modbus_serial_link",
    0x47: "device_level_ring", 0x48: "qos", 0x49: "safety_analog_input_point",
    0x4A: "safety_analog_input_group", 0x4B: "safety_dual_channel_analog_input",
    0x4C: "sercos_iii_link", 0x4D: "target_connection_list", 0x4E: "base_energy",
    0x4F: "electrical_energy", 0x50: "non_electrical_energy", 0x51: "base_switch",
    0x52: "snmp", 0x53: "power_management", 0x54: "rstp_bridge", 0x55: "rstp_port",
    0x56: "prp_hsr_protocol", 0x57: "prp_hsr_nodes_table", 0x58: "safety_feedback",
    0x59: "safety_dual_channel_feedback", 0x5A: "safety_stop_functions",
    0x5B: "safety_limit_functions", 0x5C: "power_curtailment", 0x5D: "cip_security",
    0x5E: "ethernet_ip_security", 0x5F: "certificate_management", 0x67: "pccc",
    0x6B: "symbol", 0x6C: "template", 0x8B: "wall_clock_time",
    0xF0: "controlnet", 0xF1: "controlnet_keeper", 0xF2: "controlnet_scheduling",
    0xF3: "connection_configuration", 0xF4: "port", 0xF5: "tcp_ip_interface",
    0xF6: "ethernet_link", 0xF7: "componet_link", 0xF8: "componet_repeater",
}

# Vol 1 Appendix B general status codes
CIP_STATUS: dict[int, str] = {
    0x00: "success", 0x01: "connection_failure", 0x02: "resource_unavailable",
    0x03: "invalid_parameter_value", 0x04: "path_segment_error",
    0x05: "path_destination_unknown", 0x06: "partial_transfer", 0x07: "connection_lost",
    0x08: "service_not_supported", 0x09: "invalid_attribute_value",
    0x0A: "attribute_list_error", 0x0B: "already_in_requested_mode",
    0x0C: "object_state_conflict", 0x0D: "object_already_exists",
    0x0E: "attribute_not_settable", 0x0F: "privilege_violation", 0x10: "device_state_conflict",
    0x11: "reply_data_too_large", 0x12: "fragmentation_of_primitive_value",
    0x13: "not_enough_data", 0x14: "attribute_not_supported", 0x15: "too_much_data",
    0x16: "object_does_not_exist", 0x17: "service_fragmentation_sequence_not_in_progress",
    0x18: "no_stored_attribute_data", 0x19: "store_operation_failure",
    0x1A: "routing_failure_request_too_large", 0x1B: "routing_failure_response_too_large",
    0x1C: "missing_attribute_list_entry_data", 0x1D: "invalid_attribute_value_list",
    0x1E: "embedded_service_error", 0x1F: "vendor_specific_error", 0x20: "invalid_parameter",
    0x21: "write_once_value_already_written", 0x22: "invalid_reply_received",
    0x23: "buffer_overflow", 0x24: "invalid_message_format", 0x25: "key_failure_in_path",
    0x26: "path_size_invalid", 0x27: "unexpected_attribute_in_list",
    0x28: "invalid_member_id", 0x29: "member_not_settable",
    0x2A: "group_2_only_server_general_failure", 0x2B: "unknown_modbus_error",
    0x2C: "attribute_not_gettable",
}

# Vol 1 3-5.6 Connection Manager extended status (with general status 0x01)
CIP_EXTENDED_STATUS: dict[int, str] = {
    0x0100: "connection_in_use", 0x0103: "transport_class_trigger_not_supported",
    0x0106: "ownership_conflict", 0x0107: "target_connection_not_found",
    0x0108: "invalid_network_connection_parameter", 0x0109: "invalid_connection_size",
    0x0110: "target_not_configured", 0x0111: "rpi_not_supported",
    0x0112: "rpi_value_not_acceptable", 0x0113: "out_of_connections",
    0x0114: "vendor_id_or_product_code_mismatch", 0x0115: "device_type_mismatch",
    0x0116: "revision_mismatch", 0x0117: "invalid_produced_or_consumed_application_path",
    0x0118: "invalid_configuration_application_path", 0x0119: "non_listen_only_not_opened",
    0x011A: "target_object_out_of_connections",
    0x011B: "rpi_smaller_than_production_inhibit_time", 0x011C: "transport_class_not_supported",
    0x011D: "production_trigger_not_supported", 0x011E: "direction_not_supported",
    0x011F: "invalid_ot_fixed_variable", 0x0120: "invalid_to_fixed_variable",
    0x0121: "invalid_ot_priority", 0x0122: "invalid_to_priority",
    0x0123: "invalid_ot_connection_type", 0x0124: "invalid_to_connection_type",
    0x0125: "invalid_ot_redundant_owner", 0x0126: "invalid_configuration_size",
    0x0127: "invalid_ot_size", 0x0128: "invalid_to_size",
    0x0129: "invalid_configuration_application_path",
    0x012A: "invalid_consuming_application_path", 0x012B: "invalid_producing_application_path",
    0x012C: "configuration_symbol_does_not_exist", 0x012D: "consuming_symbol_does_not_exist",
    0x012E: "producing_symbol_does_not_exist",
    0x012F: "inconsistent_application_path_combination",
    0x0130: "inconsistent_consume_data_format", 0x0131: "inconsistent_produce_data_format",
    0x0132: "null_forward_open_not_supported", 0x0203: "connection_timed_out",
    0x0204: "unconnected_request_timed_out", 0x0205: "parameter_error_in_unconnected_request",
    0x0206: "message_too_large_for_unconnected_send",
    0x0207: "unconnected_acknowledged_without_reply", 0x0301: "no_buffer_memory_available",
    0x0302: "network_bandwidth_not_available", 0x0303: "no_consumed_connection_id_filter",
    0x0304: "not_configured_for_scheduled_priority", 0x0305: "schedule_signature_mismatch",
    0x0306: "schedule_signature_validation_not_possible", 0x0311: "port_not_available",
    0x0312: "link_address_not_valid", 0x0315: "invalid_segment_in_connection_path",
    0x0316: "forward_close_connection_path_mismatch", 0x0317: "scheduling_not_specified",
    0x0318: "link_address_to_self_invalid", 0x0319: "secondary_resources_unavailable",
    0x031A: "rack_connection_already_established",
    0x031B: "module_connection_already_established", 0x031C: "miscellaneous",
    0x031D: "redundant_connection_mismatch", 0x0800: "network_link_offline",
}

# Vol 1 Table 5A-2.3 Identity reset service parameter
CIP_RESET_TYPES: dict[int, str] = {
    0: "power_cycle", 1: "factory_defaults", 2: "factory_defaults_keep_communication",
}

# Vol 1 Appendix C-6.1 elementary data types (+ 0x02A0, the Logix structure marker)
CIP_DATA_TYPES: dict[int, str] = {
    0xC1: "bool", 0xC2: "sint", 0xC3: "int", 0xC4: "dint", 0xC5: "lint", 0xC6: "usint",
    0xC7: "uint", 0xC8: "udint", 0xC9: "ulint", 0xCA: "real", 0xCB: "lreal", 0xCC: "stime",
    0xCD: "date", 0xCE: "time_of_day", 0xCF: "date_and_time", 0xD0: "string", 0xD1: "byte",
    0xD2: "word", 0xD3: "dword", 0xD4: "lword", 0xD5: "string2", 0xD6: "ftime", 0xD7: "ltime",
    0xD8: "itime", 0xD9: "stringn", 0xDA: "short_string", 0xDB: "time", 0xDC: "epath",
    0xDD: "engunit", 0xDE: "stringi", 0x02A0: "structure",
}

# Vol 1 Appendix: device profile (device type) codes
CIP_DEVICE_TYPES: dict[int, str] = {
    0x00: "generic_device", 0x01: "control_station", 0x02: "ac_drive",
    0x03: "motor_overload", 0x04: "limit_switch", 0x05: "inductive_proximity_switch",
    0x06: "photoelectric_sensor", 0x07: "general_purpose_discrete_io", 0x08: "encoder",
    0x09: "resolver", 0x0A: "general_purpose_analog_io", 0x0C: "communications_adapter",
    0x0D: "barcode_scanner", 0x0E: "programmable_logic_controller",
    0x10: "position_controller", 0x11: "weigh_scale", 0x12: "message_display",
    0x13: "dc_drive", 0x14: "servo_drive", 0x15: "contactor", 0x16: "motor_starter",
    0x17: "softstart_starter", 0x18: "human_machine_interface", 0x19: "pneumatic_valve",
    0x1A: "mass_flow_controller", 0x1B: "pneumatic_valve", 0x1C: "vacuum_pressure_gauge",
    0x1D: "process_control_value", 0x1E: "residual_gas_analyzer",
    0x1F: "dc_power_generator", 0x20: "rf_power_generator",
    0x21: "turbomolecular_vacuum_pump", 0x22: "encoder", 0x23: "safety_discrete_io",
    0x24: "fluid_flow_controller", 0x25: "cip_motion_drive", 0x26: "componet_repeater",
    0x27: "mass_flow_controller_enhanced", 0x28: "cip_modbus_device",
    0x29: "cip_modbus_translator", 0x2A: "safety_analog_io", 0x2B: "generic_device_keyable",
    0x2C: "managed_ethernet_switch", 0x2D: "cip_motion_safety_drive", 0x2E: "safety_drive",
    0x2F: "cip_motion_encoder", 0x30: "cip_motion_converter", 0x31: "cip_motion_io",
    0x32: "controlnet_physical_layer_component",
}

# ODVA vendor ids of common OT vendors, as the ODVA list (and Wireshark's and ICSNPP's copies
# of it) spells them. Data, not logic: extend freely. Unlisted ids name "unknown".
CIP_VENDORS: dict[int, str] = {
    1: "Rockwell Automation/Allen-Bradley", 3: "Honeywell Inc.",
    5: "Rockwell Automation/Reliance Elec.", 7: "SMC Corporation", 8: "Molex Incorporated",
    12: "Banner Engineering Corp.", 26: "Festo Corporation", 40: "Wago Corporation",
    43: "BALLUFF, Inc.", 44: "Yaskawa Electric America, Inc.", 46: "ABB Industrial Systems",
    47: "Omron Corporation", 48: "Turck, Inc.", 50: "Real Time Automation (C&ID)",
    56: "Softing GmbH", 57: "Pepperl + Fuchs", 58: "Spectrum Controls, Inc.",
    68: "Eaton Electrical", 71: "Toshiba International Corp.", 74: "Hitachi, Ltd.",
    75: "ABB Robotics Products AB", 81: "IXXAT Automation GmbH",
    82: "Mitsubishi Electric Automation, Inc.", 83: "OPTO-22", 90: "HMS Industrial Networks AB",
    94: "Advantech Co. Ltd.", 95: "Square D Company", 97: "Danfoss",
    100: "Bosch Rexroth Corporation, Pneumatics", 108: "Beckhoff Automation GmbH",
    109: "National Instruments", 121: "KUKA Roboter GmbH", 143: "GE Industrial Systems",
    145: "Siemens Energy & Automation/Drives", 161: "Mitsubishi Electric Corporation",
    170: "Pyramid Solutions, Inc.", 171: "Denso Wave Incorporated", 176: "Red Lion Controls",
    181: "Pilz GmbH & Co", 209: "Contemporary Controls", 243: "Schneider Automation, Inc.",
    250: "Yokogawa Electric Corporation", 255: "Bosch Rexroth", 257: "Control Techniques PLC",
    259: "LS Industrial Systems", 283: "Hilscher GmbH",
    287: "Bosch Rexroth Corporation, Indramat", 309: "Prosoft Technology",
    315: "SEW Eurodrive GmbH", 319: "Fuji Electric Co., Ltd.", 322: "ifm efector, inc.",
    326: "GE Fanuc Automation North America, Inc.", 345: "Endress + Hauser",
    352: "Bently Nevada Corporation", 356: "Fanuc Robotics America",
    361: "Wonderware Corporation", 367: "Keyence Corporation", 443: "Vacon Plc",
    445: "Lenze Drive Systems GmbH", 452: "Kollmorgen", 501: "VIPA GmbH",
    511: "SICK Stegmann GmbH", 524: "Leuze Electronic GmbH & Co. KG",
    537: "The Foxboro Company", 562: "Phoenix Contact", 591: "FANUC Ltd.",
    593: "ABB Automation Products", 634: "Hirschmann, Inc.", 640: "Murrelektronik GmbH",
    645: "Bihl & Wiedemann GmbH", 660: "Automationdirect.com", 666: "Mettler-Toledo, Inc.",
    678: "Cognex Corporation", 680: "Weidmuller, Inc.", 722: "ABB, Inc.",
    778: "Harting, Inc. NA", 796: "Siemens Energy & Automation, Inc.",
    805: "Digi International, Inc.", 808: "SICK AG", 853: "WEG Industrias SA",
    862: "Siemens AG, A&D PI Flow Instruments", 865: "Schweitzer Engineering Laboratories",
    887: "B&R Industrial Automation GmbH",
    903: "Emerson Process Management Power & Water Solutions", 914: "Micro Motion, Inc.",
    925: "HIMA Paul Hildebrandt GmbH", 928: "GE Multilin", 939: "Cisco Systems",
    947: "Belden CDT Electronics Division", 971: "Siemens L&A",
    976: "Invensys Process Systems", 991: "Moxa Networking Co., Ltd.", 1006: "N-Tron",
    1015: "Weidmueller Interface GmbH & Co. KG", 1023: "Korenix Technology Co. Ltd",
    1059: "Delta Electronic Inc.", 1109: "Inductive Automation",
    1141: "Emerson Process Management Valve Automation",
    1168: "Kunbus GmbH Industrial Communication", 1182: "Endress+Hauser",
    1225: "Rosemount Inc.", 1251: "Siemens AG", 1285: "3S-Smart Software Solutions GmbH",
    1289: "eWON", 1291: "KROHNE", 1303: "Carlo Gavazzi Controls",
    1307: "Kepware Technologies", 1328: "Fisher-Rosemount Systems, Inc.",
    1346: "Beijer Electronics Products AB", 1382: "Unitronics (1989) (RG) LTD",
    1399: "Universal Robots A/S", 1418: "Emerson Process Management",
    1439: "Kyland Corporation", 1475: "Atop Technologies", 1507: "CIMON", 1512: "SAMSON AG",
}

PCCC_COMMANDS: dict[int, str] = {
    0x00: "protected_write", 0x01: "unprotected_read", 0x02: "protected_bit_write",
    0x05: "unprotected_bit_write", 0x08: "unprotected_write",
}

PCCC_FUNCTIONS: dict[tuple[int, int], str] = {
    (0x06, 0x00): "echo", (0x06, 0x03): "diagnostic_status",
    (0x0F, 0x00): "word_range_write", (0x0F, 0x01): "word_range_read",
    (0x0F, 0x67): "typed_write", (0x0F, 0x68): "typed_read",
    (0x0F, 0xA1): "protected_typed_logical_read_2_address",
    (0x0F, 0xA2): "protected_typed_logical_read_3_address",
    (0x0F, 0xA9): "protected_typed_logical_write_2_address",
    (0x0F, 0xAA): "protected_typed_logical_write_3_address",
    (0x0F, 0xAB): "protected_typed_logical_masked_write_3_address",
}


# --- codes the parsers test for, the bounds they share, their anomalies ------------------------

CIP_RESPONSE_BIT = 0x80                # Vol 1 2-4.2: reply service = request service | 0x80
CIP_MAX_DATA = 64                      # opaque bytes kept (as hex) per record
CIP_MAX_LIST = 64                      # attribute ids / connection points kept per record
CIP_MAX_SERVICES = 64                  # Multiple Service Packet members decoded per message
CIP_MAX_DEPTH = 3                      # Unconnected Send / MSP nesting followed

CIP_CLASS_SPECIFIC_RANGE = range(0x32, 0x64)   # Appendix A: vendor (0x32-0x4A) + class specific
CLASS_IDENTITY = 0x01
CLASS_CONNECTION_MANAGER = 0x06
CLASS_FILE = 0x37
CLASS_PCCC = 0x67
SVC_GET_ATTRIBUTES_ALL = 0x01
SVC_GET_ATTRIBUTE_LIST = 0x03
SVC_SET_ATTRIBUTE_LIST = 0x04
SVC_RESET = 0x05
SVC_MULTIPLE = 0x0A
SVC_GET_ATTRIBUTE_SINGLE = 0x0E
SVC_SET_ATTRIBUTE_SINGLE = 0x10
SVC_FORWARD_CLOSE = 0x4E
SVC_UNCONNECTED_SEND = 0x52
SVC_FORWARD_OPEN = 0x54
SVC_LARGE_FORWARD_OPEN = 0x5B
FORWARD_OPENS = frozenset({SVC_FORWARD_OPEN, SVC_LARGE_FORWARD_OPEN})
SVC_EXECUTE_PCCC = 0x4B

CIP_STATUS_OK = frozenset({0x00, 0x06})     # partial transfer is how fragmented reads go on
CIP_STATUS_CONNECTION_FAILURE = 0x01

LOGIX_STRUCTURE = 0x02A0
# Tag services carry a Logix tag body only on a symbolic path or the symbol object; RSLogix
# uses the same codes on its own numbered objects with bodies nobody has documented.
CLASS_LOGIX_SYMBOL = 0x6B

# Rockwell 1770-6.5.16 (DF1 command set): PCCC commands, and functions of the commands that
# carry one (CMD 0x06 diagnostics, 0x0F typed/logical). Replies set bit 0x40 of the command.
PCCC_REPLY_BIT = 0x40
PCCC_FUNC_COMMANDS = frozenset({0x06, 0x07, 0x0F})
PCCC_EXTENDED_STATUS = 0xF0      # DF1 7-x: STS 0xF0 means an EXT STS byte follows the TNS

A_TRUNCATED = "cip.truncated"
A_PATH = "cip.invalid_path"
A_UNKNOWN_SERVICE = "cip.unknown_service"
A_UNKNOWN_STATUS = "cip.unknown_status"
A_LENGTH = "cip.invalid_length"
A_TOO_MANY_SERVICES = "cip.too_many_services"
A_SERVICE_MISMATCH = "cip.service_mismatch"
