"""BACnet tags: the clause 20.2 tag encoding, the clause 21 enumerations and the vendor ids.

Kept apart from :mod:`edge_agent.decode.bacnet` (BVLL, NPDU, APDU and the services) because this
is what every service production is made of: :func:`read_tag` reads one tag header (20.2.1:
tag number, class, length/value/type, extended numbers and lengths, opening and closing tags),
:func:`app_value` decodes an application-tagged primitive (20.2.2-20.2.14), :func:`read_values`
an abstract-syntax value up to its closing tag, and :class:`TagReader` walks a production's
context tags in order. Lengths are bounded: strings, octet strings and value lists are cut at
``BACNET_MAX_*``. Hostile bytes raise :class:`Truncated` or :class:`InvalidTag` only.

The object
type, property identifier and error code tables were generated from bacpypes3's clause 21
enumerations (camelCase to snake_case) and checked against Wireshark's packet-bacapp.c; the
vendor ids are a selection of ASHRAE's registry (bacnet.org/assigned-vendor-ids), checked
against the copies in Wireshark and VOLTTRON.
"""
from __future__ import annotations

import math
import struct
from typing import Any

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

# ASHRAE's BACnet vendor id registry, a selection: ids 0-100 and the vendors common in plants
# and buildings after that. Names as registered (legal suffixes kept).
BACNET_VENDORS: dict[int, str] = {
    0: "ASHRAE", 1: "NIST", 2: "The Trane Company", 3: "McQuay International",
    4: "PolarSoft", 5: "Johnson Controls, Inc.", 6: "American Auto-Matrix",
    7: "Siemens Schweiz AG (Formerly: Landis & Staefa Division Europe)", 8: "Delta Controls",
    9: "Siemens Schweiz AG", 10: "Schneider Electric", 11: "TAC", 12: "Orion Analysis Corporation",
    13: "Teletrol Systems Inc.", 14: "Cimetrics Technology", 15: "Cornell University",
    16: "United Technologies Carrier", 17: "Honeywell Inc.", 18: "Alerton / Honeywell",
    19: "TAC AB", 20: "Hewlett-Packard Company", 21: "Dorsette's Inc.",
    22: "Siemens Schweiz AG (Formerly: Cerberus AG)", 23: "York Controls Group",
    24: "Automated Logic Corporation", 25: "CSI Control Systems International",
    26: "Phoenix Controls Corporation", 27: "Innovex Technologies, Inc.",
    28: "KMC Controls, Inc.", 29: "Xn Technologies, Inc.",
    30: "Hyundai Information Technology Co., Ltd.", 31: "Tokimec Inc.", 32: "Simplex",
    33: "North Building Technologies Limited", 34: "Notifier",
    35: "Reliable Controls Corporation", 36: "Tridium Inc.",
    37: "Sierra Monitor Corporation/FieldServer Technologies", 38: "Silicon Energy",
    39: "Kieback & Peter GmbH & Co KG", 40: "Anacon Systems, Inc.",
    41: "Systems Controls & Instruments, LLC", 42: "Acuity Brands Lighting, Inc.",
    43: "Micropower Manufacturing", 44: "Matrix Controls", 45: "METALAIRE",
    46: "ESS Engineering", 47: "Sphere Systems Pty Ltd.", 48: "Walker Technologies Corporation",
    49: "H I Solutions, Inc.", 50: "MBS GmbH", 51: "SAMSON AG", 52: "Badger Meter Inc.",
    53: "DAIKIN Industries Ltd.", 54: "NARA Controls Inc.", 55: "Mammoth Inc.",
    56: "Liebert Corporation", 57: "SEMCO Incorporated", 58: "Air Monitor Corporation",
    59: "TRIATEK, LLC", 60: "NexLight", 61: "Multistack", 62: "TSI Incorporated",
    63: "Weather-Rite, Inc.", 64: "Dunham-Bush", 65: "Reliance Electric", 66: "LCS Inc.",
    67: "Regulator Australia PTY Ltd.", 68: "Touch-Plate Lighting Controls", 69: "Amann GmbH",
    70: "RLE Technologies", 71: "Cardkey Systems", 72: "SECOM Co., Ltd.",
    73: "ABB Gebäudetechnik AG Bereich NetServ", 74: "KNX Association cvba",
    75: "Institute of Electrical Installation Engineers of Japan (IEIEJ)",
    76: "Nohmi Bosai, Ltd.", 77: "Carel S.p.A.", 78: "UTC Fire & Security España, S.L.",
    79: "Hochiki Corporation", 80: "Fr. Sauter AG", 81: "Matsushita Electric Works, Ltd.",
    82: "Mitsubishi Electric Corporation, Inazawa Works", 83: "Mitsubishi Heavy Industries, Ltd.",
    84: "Xylem, Inc.", 85: "Yamatake Building Systems Co., Ltd.", 86: "The Watt Stopper, Inc.",
    87: "Aichi Tokei Denki Co., Ltd.", 88: "Activation Technologies, LLC",
    89: "Saia-Burgess Controls, Ltd.", 90: "Hitachi, Ltd.",
    91: "Novar Corp./Trend Control Systems Ltd.", 92: "Mitsubishi Electric Lighting Corporation",
    93: "Argus Control Systems, Ltd.", 94: "Kyuki Corporation",
    95: "Richards-Zeta Building Intelligence, Inc.", 96: "Scientech R&D, Inc.",
    97: "VCI Controls, Inc.", 98: "Toshiba Corporation",
    99: "Mitsubishi Electric Corporation Air Conditioning & Refrigeration Systems Works",
    100: "Custom Mechanical Equipment, LLC",
    105: "PRIVA BV", 111: "Leviton Manufacturing", 112: "Fujitsu Limited",
    113: "Emerson Network Power", 127: "ABB, Inc.", 129: "Toshiba Carrier Corporation",
    140: "Viconics Electronics, Inc.", 141: "Yaskawa America, Inc.",
    142: "DEOS control systems GmbH", 150: "Advantech Corporation", 154: "Unitec Corporation",
    160: "Rockwell Automation", 163: "SysMik GmbH Dresden", 169: "Vacon Plc",
    171: "Cylon Controls, Ltd.", 176: "Lutron Electronics Co., Inc.",
    178: "LOYTEC Electronics GmbH", 179: "ProLon", 187: "Softing", 188: "Lynxspring, Inc.",
    190: "Danfoss Drives A/S", 191: "Eaton Corporation", 196: "Yokogawa Electric Corporation",
    211: "VIPA GmbH", 220: "Control Techniques, Ltd.", 222: "WAGO Kontakttechnik GmbH & Co. KG",
    226: "Phoenix Contact GmbH & Co. KG", 227: "Grundfos Management A/S",
    233: "Red Lion Controls", 237: "LS Industrial Systems Co., Ltd.", 238: "Square D Company",
    245: "Contemporary Control Systems, Inc.", 246: "Intesis Software SL", 251: "WILO SE",
    255: "Lennox International, Inc.", 260: "BACnet Stack at SourceForge", 264: "Regin AB",
    276: "GE Consumer & Industrial", 287: "Parker Hannifin Corporation",
    303: "Real Time Automation, Inc.", 313: "Siemens Industry, Inc.",
    316: "Janitza Electronics GmbH",
    329: "TROX GmbH", 332: "Distech Controls SAS", 335: "Schneider Electric",
    339: "VAISALA Oyj", 343: "BACnet Interoperability Testing Services, Inc.",
    364: "Distech Controls Inc.", 366: "ICONICS, Inc.", 384: "Domat Control System s.r.o.",
    388: "Carlo Gavazzi Controls SpA", 389: "Chipkin Automation Systems",
}

# Clause 21 BACnetObjectType (0-127 ASHRAE, 128-1023 proprietary)
BACNET_OBJECT_TYPES: dict[int, str] = {
    0: 'analog_input', 1: 'analog_output', 2: 'analog_value', 3: 'binary_input',
    4: 'binary_output', 5: 'binary_value', 6: 'calendar', 7: 'command', 8: 'device',
    9: 'event_enrollment', 10: 'file', 11: 'group', 12: 'loop', 13: 'multi_state_input',
    14: 'multi_state_output', 15: 'notification_class', 16: 'program', 17: 'schedule',
    18: 'averaging', 19: 'multi_state_value', 20: 'trend_log', 21: 'life_safety_point',
    22: 'life_safety_zone', 23: 'accumulator', 24: 'pulse_converter', 25: 'event_log',
    26: 'global_group', 27: 'trend_log_multiple', 28: 'load_control', 29: 'structured_view',
    30: 'access_door', 31: 'timer', 32: 'access_credential', 33: 'access_point',
    34: 'access_rights', 35: 'access_user', 36: 'access_zone', 37: 'credential_data_input',
    38: 'network_security', 39: 'bitstring_value', 40: 'characterstring_value',
    41: 'date_pattern_value', 42: 'date_value', 43: 'datetime_pattern_value', 44: 'datetime_value',
    45: 'integer_value', 46: 'large_analog_value', 47: 'octetstring_value',
    48: 'positive_integer_value', 49: 'time_pattern_value', 50: 'time_value',
    51: 'notification_forwarder', 52: 'alert_enrollment', 53: 'channel', 54: 'lighting_output',
    55: 'binary_lighting_output', 56: 'network_port', 57: 'elevator_group', 58: 'escalator',
    59: 'lift', 60: 'staging', 61: 'audit_log', 62: 'audit_reporter',
}

# Clause 21 BACnetPropertyIdentifier (0-511 ASHRAE, 512-4194303 proprietary)
BACNET_PROPERTIES: dict[int, str] = {
    0: 'acked_transitions', 1: 'ack_required', 2: 'action', 3: 'action_text', 4: 'active_text',
    5: 'active_vt_sessions', 6: 'alarm_value', 7: 'alarm_values', 8: 'all',
    9: 'all_writes_successful', 10: 'apdu_segment_timeout', 11: 'apdu_timeout',
    12: 'application_software_version', 13: 'archive', 14: 'bias', 15: 'change_of_state_count',
    16: 'change_of_state_time', 17: 'notification_class', 19: 'controlled_variable_reference',
    20: 'controlled_variable_units', 21: 'controlled_variable_value', 22: 'cov_increment',
    23: 'date_list', 24: 'daylight_savings_status', 25: 'deadband', 26: 'derivative_constant',
    27: 'derivative_constant_units', 28: 'description', 29: 'description_of_halt',
    30: 'device_address_binding', 31: 'device_type', 32: 'effective_period',
    33: 'elapsed_active_time', 34: 'error_limit', 35: 'event_enable', 36: 'event_state',
    37: 'event_type', 38: 'exception_schedule', 39: 'fault_values', 40: 'feedback_value',
    41: 'file_access_method', 42: 'file_size', 43: 'file_type', 44: 'firmware_revision',
    45: 'high_limit', 46: 'inactive_text', 47: 'in_process', 48: 'instance_of',
    49: 'integral_constant', 50: 'integral_constant_units', 51: 'issue_confirmed_notifications',
    52: 'limit_enable', 53: 'list_of_group_members', 54: 'list_of_object_property_references',
    55: 'list_of_session_keys', 56: 'local_date', 57: 'local_time', 58: 'location',
    59: 'low_limit', 60: 'manipulated_variable_reference', 61: 'maximum_output',
    62: 'max_apdu_length_accepted', 63: 'max_info_frames', 64: 'max_master', 65: 'max_pres_value',
    66: 'minimum_off_time', 67: 'minimum_on_time', 68: 'minimum_output', 69: 'min_pres_value',
    70: 'model_name', 71: 'modification_date', 72: 'notify_type', 73: 'number_of_apdu_retries',
    74: 'number_of_states', 75: 'object_identifier', 76: 'object_list', 77: 'object_name',
    78: 'object_property_reference', 79: 'object_type', 80: 'optional', 81: 'out_of_service',
    82: 'output_units', 83: 'event_parameters', 84: 'polarity', 85: 'present_value',
    86: 'priority', 87: 'priority_array', 88: 'priority_for_writing', 89: 'process_identifier',
    90: 'program_change', 91: 'program_location', 92: 'program_state', 93: 'proportional_constant',
    94: 'proportional_constant_units', 96: 'protocol_object_types_supported',
    97: 'protocol_services_supported', 98: 'protocol_version', 99: 'read_only',
    100: 'reason_for_halt', 102: 'recipient_list', 103: 'reliability', 104: 'relinquish_default',
    105: 'required', 106: 'resolution', 107: 'segmentation_supported', 108: 'setpoint',
    109: 'setpoint_reference', 110: 'state_text', 111: 'status_flags', 112: 'system_status',
    113: 'time_delay', 114: 'time_of_active_time_reset', 115: 'time_of_state_count_reset',
    116: 'time_synchronization_recipients', 117: 'units', 118: 'update_interval',
    119: 'utc_offset', 120: 'vendor_identifier', 121: 'vendor_name', 122: 'vt_classes_supported',
    123: 'weekly_schedule', 124: 'attempted_samples', 125: 'average_value', 126: 'buffer_size',
    127: 'client_cov_increment', 128: 'cov_resubscription_interval', 130: 'event_time_stamps',
    131: 'log_buffer', 132: 'log_device_object_property', 133: 'enable', 134: 'log_interval',
    135: 'maximum_value', 136: 'minimum_value', 137: 'notification_threshold',
    139: 'protocol_revision', 140: 'records_since_notification', 141: 'record_count',
    142: 'start_time', 143: 'stop_time', 144: 'stop_when_full', 145: 'total_record_count',
    146: 'valid_samples', 147: 'window_interval', 148: 'window_samples',
    149: 'maximum_value_timestamp', 150: 'minimum_value_timestamp', 151: 'variance_value',
    152: 'active_cov_subscriptions', 153: 'backup_failure_timeout', 154: 'configuration_files',
    155: 'database_revision', 156: 'direct_reading', 157: 'last_restore_time',
    158: 'maintenance_required', 159: 'member_of', 160: 'mode', 161: 'operation_expected',
    162: 'setting', 163: 'silenced', 164: 'tracking_value', 165: 'zone_members',
    166: 'life_safety_alarm_values', 167: 'max_segments_accepted', 168: 'profile_name',
    169: 'auto_slave_discovery', 170: 'manual_slave_address_binding', 171: 'slave_address_binding',
    172: 'slave_proxy_enable', 173: 'last_notify_record', 174: 'schedule_default',
    175: 'accepted_modes', 176: 'adjust_value', 177: 'count', 178: 'count_before_change',
    179: 'count_change_time', 180: 'cov_period', 181: 'input_reference',
    182: 'limit_monitoring_interval', 183: 'logging_object', 184: 'logging_record',
    185: 'prescale', 186: 'pulse_rate', 187: 'scale', 188: 'scale_factor', 189: 'update_time',
    190: 'value_before_change', 191: 'value_set', 192: 'value_change_time', 193: 'align_intervals',
    195: 'interval_offset', 196: 'last_restart_reason', 197: 'logging_type',
    202: 'restart_notification_recipients', 203: 'time_of_device_restart',
    204: 'time_synchronization_interval', 205: 'trigger',
    206: 'utc_time_synchronization_recipients', 207: 'node_subtype', 208: 'node_type',
    209: 'structured_object_list', 210: 'subordinate_annotations', 211: 'subordinate_list',
    212: 'actual_shed_level', 213: 'duty_window', 214: 'expected_shed_level',
    215: 'full_duty_baseline', 218: 'requested_shed_level', 219: 'shed_duration',
    220: 'shed_level_descriptions', 221: 'shed_levels', 222: 'state_description',
    226: 'door_alarm_state', 227: 'door_extended_pulse_time', 228: 'door_members',
    229: 'door_open_too_long_time', 230: 'door_pulse_time', 231: 'door_status',
    232: 'door_unlock_delay_time', 233: 'lock_status', 234: 'masked_alarm_values',
    235: 'secured_status', 244: 'absentee_limit', 245: 'access_alarm_events', 246: 'access_doors',
    247: 'access_event', 248: 'access_event_authentication_factor', 249: 'access_event_credential',
    250: 'access_event_time', 251: 'access_transaction_events', 252: 'accompaniment',
    253: 'accompaniment_time', 254: 'activation_time', 255: 'active_authentication_policy',
    256: 'assigned_access_rights', 257: 'authentication_factors',
    258: 'authentication_policy_list', 259: 'authentication_policy_names',
    260: 'authentication_status', 261: 'authorization_mode', 262: 'belongs_to',
    263: 'credential_disable', 264: 'credential_status', 265: 'credentials',
    266: 'credentials_in_zone', 267: 'days_remaining', 268: 'entry_points', 269: 'exit_points',
    270: 'expiration_time', 271: 'extended_time_enable', 272: 'failed_attempt_events',
    273: 'failed_attempts', 274: 'failed_attempts_time', 275: 'last_access_event',
    276: 'last_access_point', 277: 'last_credential_added', 278: 'last_credential_added_time',
    279: 'last_credential_removed', 280: 'last_credential_removed_time', 281: 'last_use_time',
    282: 'lockout', 283: 'lockout_relinquish_time', 284: 'master_exemption',
    285: 'max_failed_attempts', 286: 'members', 287: 'muster_point', 288: 'negative_access_rules',
    289: 'number_of_authentication_policies', 290: 'occupancy_count',
    291: 'occupancy_count_adjust', 292: 'occupancy_count_enable', 293: 'occupancy_exemption',
    294: 'occupancy_lower_limit', 295: 'occupancy_lower_limit_enforced', 296: 'occupancy_state',
    297: 'occupancy_upper_limit', 298: 'occupancy_upper_limit_enforced', 299: 'passback_exemption',
    300: 'passback_mode', 301: 'passback_timeout', 302: 'positive_access_rules',
    303: 'reason_for_disable', 304: 'supported_formats', 305: 'supported_format_classes',
    306: 'threat_authority', 307: 'threat_level', 308: 'trace_flag',
    309: 'transaction_notification_class', 310: 'user_external_identifier',
    311: 'user_information_reference', 317: 'user_name', 318: 'user_type', 319: 'uses_remaining',
    320: 'zone_from', 321: 'zone_to', 322: 'access_event_tag', 323: 'global_identifier',
    326: 'verification_time', 327: 'base_device_security_policy', 328: 'distribution_key_revision',
    329: 'do_not_hide', 330: 'key_sets', 331: 'last_key_server',
    332: 'network_access_security_policies', 333: 'packet_reorder_time',
    334: 'security_pdu_timeout', 335: 'security_time_window', 336: 'supported_security_algorithms',
    337: 'update_key_set_timeout', 338: 'backup_and_restore_state', 339: 'backup_preparation_time',
    340: 'restore_completion_time', 341: 'restore_preparation_time', 342: 'bit_mask',
    343: 'bit_text', 344: 'is_utc', 345: 'group_members', 346: 'group_member_names',
    347: 'member_status_flags', 348: 'requested_update_interval', 349: 'covu_period',
    350: 'covu_recipients', 351: 'event_message_texts', 352: 'event_message_texts_config',
    353: 'event_detection_enable', 354: 'event_algorithm_inhibit',
    355: 'event_algorithm_inhibit_ref', 356: 'time_delay_normal',
    357: 'reliability_evaluation_inhibit', 358: 'fault_parameters', 359: 'fault_type',
    360: 'local_forwarding_only', 361: 'process_identifier_filter', 362: 'subscribed_recipients',
    363: 'port_filter', 364: 'authorization_exemptions', 365: 'allow_group_delay_inhibit',
    366: 'channel_number', 367: 'control_groups', 368: 'execution_delay', 369: 'last_priority',
    370: 'write_status', 371: 'property_list', 372: 'serial_number', 373: 'blink_warn_enable',
    374: 'default_fade_time', 375: 'default_ramp_rate', 376: 'default_step_increment',
    377: 'egress_time', 378: 'in_progress', 379: 'instantaneous_power', 380: 'lighting_command',
    381: 'lighting_command_default_priority', 382: 'max_actual_value', 383: 'min_actual_value',
    384: 'power', 385: 'transition', 386: 'egress_active', 387: 'interface_value',
    388: 'fault_high_limit', 389: 'fault_low_limit', 390: 'low_diff_limit', 391: 'strike_count',
    392: 'time_of_strike_count_reset', 393: 'default_timeout', 394: 'initial_timeout',
    395: 'last_state_change', 396: 'state_change_values', 397: 'timer_running', 398: 'timer_state',
    399: 'apdu_length', 400: 'ip_address', 401: 'ip_default_gateway', 402: 'ip_dhcp_enable',
    403: 'ip_dhcp_lease_time', 404: 'ip_dhcp_lease_time_remaining', 405: 'ip_dhcp_server',
    406: 'ip_dns_server', 407: 'bacnet_ip_global_address', 408: 'bacnet_ip_mode',
    409: 'bacnet_ip_multicast_address', 410: 'bacnet_ipnat_traversal', 411: 'ip_subnet_mask',
    412: 'bacnet_ipudp_port', 413: 'bbmd_accept_fd_registrations',
    414: 'bbmd_broadcast_distribution_table', 415: 'bbmd_foreign_device_table',
    416: 'changes_pending', 417: 'command', 418: 'fd_bbmd_address',
    419: 'fd_subscription_lifetime', 420: 'link_speed', 421: 'link_speeds',
    422: 'link_speed_autonegotiate', 423: 'mac_address', 424: 'network_interface_name',
    425: 'network_number', 426: 'network_number_quality', 427: 'network_type',
    428: 'routing_table', 429: 'virtual_mac_address_table', 430: 'command_time_array',
    431: 'current_command_priority', 432: 'last_command_time', 433: 'value_source',
    434: 'value_source_array', 435: 'bacnet_i_pv6_mode', 436: 'ipv6_address',
    437: 'ipv6_prefix_length', 438: 'bacnet_i_pv6_udp_port', 439: 'ipv6_default_gateway',
    440: 'bacnet_i_pv6_multicast_address', 441: 'ipv6_dns_server',
    442: 'ipv6_auto_addressing_enable', 443: 'ipv6_dhcp_lease_time',
    444: 'ipv6_dhcp_lease_time_remaining', 445: 'ipv6_dhcp_server', 446: 'ipv6_zone_index',
    447: 'assigned_landing_calls', 448: 'car_assigned_direction', 449: 'car_door_command',
    450: 'car_door_status', 451: 'car_door_text', 452: 'car_door_zone', 453: 'car_drive_status',
    454: 'car_load', 455: 'car_load_units', 456: 'car_mode', 457: 'car_moving_direction',
    458: 'car_position', 459: 'elevator_group', 460: 'energy_meter', 461: 'energy_meter_ref',
    462: 'escalator_mode', 463: 'fault_signals', 464: 'floor_text', 465: 'group_id',
    467: 'group_mode', 468: 'higher_deck', 469: 'installation_id', 470: 'landing_calls',
    471: 'landing_call_control', 472: 'landing_door_status', 473: 'lower_deck',
    474: 'machine_room_id', 475: 'making_car_call', 476: 'next_stopping_floor',
    477: 'operation_direction', 478: 'passenger_alarm', 479: 'power_mode',
    480: 'registered_car_call', 481: 'active_cov_multiple_subscriptions', 482: 'protocol_level',
    483: 'reference_port', 484: 'deployed_profile_location', 485: 'profile_location', 486: 'tags',
    487: 'subordinate_node_types', 488: 'subordinate_tags', 489: 'subordinate_relationships',
    490: 'default_subordinate_relationship', 491: 'represents', 492: 'default_present_value',
    493: 'present_stage', 494: 'stages', 495: 'stage_names', 496: 'target_references',
    497: 'audit_source_reporter', 498: 'audit_level', 499: 'audit_notification_recipient',
    500: 'audit_priority_filter', 501: 'auditable_operations', 502: 'delete_on_forward',
    503: 'maximum_send_delay', 504: 'monitored_objects', 505: 'send_now', 506: 'floor_number',
    507: 'device_uuid',
}

# Clause 21 BACnetErrorCode (1, 6, 12, 15 and 28 were deleted in 135-2012; older devices send them)
BACNET_ERROR_CODES: dict[int, str] = {
    0: 'other', 1: 'authentication_failed', 2: 'configuration_in_progress', 3: 'device_busy',
    4: 'dynamic_creation_not_supported', 5: 'file_access_denied',
    6: 'incompatible_security_levels', 7: 'inconsistent_parameters',
    8: 'inconsistent_selection_criterion', 9: 'invalid_data_type',
    10: 'invalid_file_access_method', 11: 'invalid_file_start_position',
    12: 'invalid_operator_name', 13: 'invalid_parameter_data_type', 14: 'invalid_time_stamp',
    15: 'key_generation_error', 16: 'missing_required_parameter',
    17: 'no_objects_of_specified_type', 18: 'no_space_for_object',
    19: 'no_space_to_add_list_element', 20: 'no_space_to_write_property',
    21: 'no_vt_sessions_available', 22: 'property_is_not_a_list',
    23: 'object_deletion_not_permitted', 24: 'object_identifier_already_exists',
    25: 'operational_problem', 26: 'password_failure', 27: 'read_access_denied',
    28: 'security_not_supported', 29: 'service_request_denied', 30: 'timeout',
    31: 'unknown_object', 32: 'unknown_property', 34: 'unknown_vt_class', 35: 'unknown_vt_session',
    36: 'unsupported_object_type', 37: 'value_out_of_range', 38: 'vt_session_already_closed',
    39: 'vt_session_termination_failure', 40: 'write_access_denied',
    41: 'character_set_not_supported', 42: 'invalid_array_index', 43: 'cov_subscription_failed',
    44: 'not_cov_property', 45: 'optional_functionality_not_supported',
    46: 'invalid_configuration_data', 47: 'datatype_not_supported', 48: 'duplicate_name',
    49: 'duplicate_object_id', 50: 'property_is_not_an_array', 51: 'abort_buffer_overflow',
    52: 'abort_invalid_apdu_in_this_state', 53: 'abort_preempted_by_higher_priority_task',
    54: 'abort_segmentation_not_supported', 55: 'abort_proprietary', 56: 'abort_other',
    57: 'invalid_tag', 58: 'network_down', 59: 'reject_buffer_overflow',
    60: 'reject_inconsistent_parameters', 61: 'reject_invalid_parameter_data_type',
    62: 'reject_invalid_tag', 63: 'reject_missing_required_parameter',
    64: 'reject_parameter_out_of_range', 65: 'reject_too_many_arguments',
    66: 'reject_undefined_enumeration', 67: 'reject_unrecognized_service',
    68: 'reject_proprietary', 69: 'reject_other', 70: 'unknown_device', 71: 'unknown_route',
    72: 'value_not_initialized', 73: 'invalid_event_state', 74: 'no_alarm_configured',
    75: 'log_buffer_full', 76: 'logged_value_purged', 77: 'no_property_specified',
    78: 'not_configured_for_triggered_logging', 79: 'unknown_subscription',
    80: 'parameter_out_of_range', 81: 'list_element_not_found', 82: 'busy',
    83: 'communication_disabled', 84: 'success', 85: 'access_denied',
    86: 'bad_destination_address', 87: 'bad_destination_device_id', 88: 'bad_signature',
    89: 'bad_source_address', 90: 'bad_timestamp', 91: 'cannot_use_key',
    92: 'cannot_verify_message_id', 93: 'correct_key_revision',
    94: 'destination_device_id_required', 95: 'duplicate_message', 96: 'encryption_not_configured',
    97: 'encryption_required', 98: 'incorrect_key', 99: 'invalid_key_data',
    100: 'key_update_in_progress', 101: 'malformed_message', 102: 'not_key_server',
    103: 'security_not_configured', 104: 'source_security_required', 105: 'too_many_keys',
    106: 'unknown_authentication_type', 107: 'unknown_key', 108: 'unknown_key_revision',
    109: 'unknown_source_message', 110: 'not_router_to_dnet', 111: 'router_busy',
    112: 'unknown_network_message', 113: 'message_too_long', 114: 'security_error',
    115: 'addressing_error', 116: 'write_bdt_failed', 117: 'read_bdt_failed',
    118: 'register_foreign_device_failed', 119: 'read_fdt_failed', 120: 'delete_fdt_entry_failed',
    121: 'distribute_broadcast_failed', 122: 'unknown_file_size', 123: 'abort_apdu_too_long',
    124: 'abort_application_exceeded_reply_time', 125: 'abort_out_of_resources',
    126: 'abort_tsm_timeout', 127: 'abort_window_size_out_of_range', 128: 'file_full',
    129: 'inconsistent_configuration', 130: 'inconsistent_object_type', 131: 'internal_error',
    132: 'not_configured', 133: 'out_of_memory', 134: 'value_too_long',
    135: 'abort_insufficient_security', 136: 'abort_security_error', 137: 'duplicate_entry',
    138: 'invalid_value_in_this_state', 140: 'list_item_not_numbered',
    141: 'list_item_not_timestamped', 142: 'invalid_data_encoding', 143: 'bvlc_function_unknown',
    144: 'bvlc_proprietary_function_unknown', 145: 'header_encoding_error',
    146: 'header_not_understood', 147: 'message_incomplete', 148: 'not_a_bacnet_sc_hub',
    149: 'payload_expected', 150: 'unexpected_data', 151: 'node_duplicate_vmac',
    152: 'http_unexpected_response_code', 153: 'http_no_upgrade', 154: 'http_resource_not_local',
    155: 'http_proxy_authentication_failed', 156: 'http_response_timeout',
    157: 'http_response_syntax_error', 158: 'http_response_value_error',
    159: 'http_response_missing_header', 160: 'http_websocket_header_error',
    161: 'http_upgrade_required', 162: 'http_upgrade_error', 163: 'http_temporary_unavailable',
    164: 'http_not_a_server', 165: 'http_error', 166: 'websocket_scheme_not_supported',
    167: 'websocket_unknown_control_message', 168: 'websocket_close_error',
    169: 'websocket_closed_by_peer', 170: 'websocket_endpoint_leaves',
    171: 'websocket_protocol_error', 172: 'websocket_data_not_accepted',
    173: 'websocket_closed_abnormally', 174: 'websocket_data_inconsistent',
    175: 'websocket_data_against_policy', 176: 'websocket_frame_too_long',
    177: 'websocket_extension_missing', 178: 'websocket_request_unavailable',
    179: 'websocket_error', 180: 'tls_client_certificate_error',
    181: 'tls_server_certificate_error', 182: 'tls_client_authentication_failed',
    183: 'tls_server_authentication_failed', 184: 'tls_client_certificate_expired',
    185: 'tls_server_certificate_expired', 186: 'tls_client_certificate_revoked',
    187: 'tls_server_certificate_revoked', 188: 'tle_error', 189: 'dns_unavailable',
    190: 'dns_name_resolution_failed', 191: 'dns_resolver_failure', 192: 'dns_error',
    193: 'tcp_connect_timeout', 194: 'tcp_connection_refused', 195: 'tcp_closed_by_local',
    196: 'tcp_closed_other', 197: 'tcp_error', 198: 'ip_address_not_reachable', 199: 'ip_error',
}


# Clause 21 BACnetErrorClass
BACNET_ERROR_CLASSES: dict[int, str] = {
    0: "device", 1: "object", 2: "property", 3: "resources", 4: "security", 5: "services",
    6: "vt", 7: "communication",
}

# Clause 21 BACnetRejectReason (64-255 proprietary)
BACNET_REJECT_REASONS: dict[int, str] = {
    0: "other", 1: "buffer_overflow", 2: "inconsistent_parameters",
    3: "invalid_parameter_data_type", 4: "invalid_tag", 5: "missing_required_parameter",
    6: "parameter_out_of_range", 7: "too_many_arguments", 8: "undefined_enumeration",
    9: "unrecognized_service", 10: "invalid_data_encoding",
}

# Clause 21 BACnetAbortReason (64-255 proprietary)
BACNET_ABORT_REASONS: dict[int, str] = {
    0: "other", 1: "buffer_overflow", 2: "invalid_apdu_in_this_state",
    3: "preempted_by_higher_priority_task", 4: "segmentation_not_supported", 5: "security_error",
    6: "insufficient_security", 7: "window_size_out_of_range", 8: "application_exceeded_reply_time",
    9: "out_of_resources", 10: "tsm_timeout", 11: "apdu_too_long",
}

# Clause 21 BACnetConfirmedServiceChoice
BACNET_CONFIRMED_SERVICES: dict[int, str] = {
    0: "acknowledge_alarm", 1: "confirmed_cov_notification", 2: "confirmed_event_notification",
    3: "get_alarm_summary", 4: "get_enrollment_summary", 5: "subscribe_cov",
    6: "atomic_read_file", 7: "atomic_write_file", 8: "add_list_element",
    9: "remove_list_element", 10: "create_object", 11: "delete_object", 12: "read_property",
    13: "read_property_conditional", 14: "read_property_multiple", 15: "write_property",
    16: "write_property_multiple", 17: "device_communication_control",
    18: "confirmed_private_transfer", 19: "confirmed_text_message", 20: "reinitialize_device",
    21: "vt_open", 22: "vt_close", 23: "vt_data", 24: "authenticate", 25: "request_key",
    26: "read_range", 27: "life_safety_operation", 28: "subscribe_cov_property",
    29: "get_event_information", 30: "subscribe_cov_property_multiple",
    31: "confirmed_cov_notification_multiple", 32: "confirmed_audit_notification",
    33: "audit_log_query",
}

# Clause 21 BACnetUnconfirmedServiceChoice
BACNET_UNCONFIRMED_SERVICES: dict[int, str] = {
    0: "i_am", 1: "i_have", 2: "unconfirmed_cov_notification", 3: "unconfirmed_event_notification",
    4: "unconfirmed_private_transfer", 5: "unconfirmed_text_message", 6: "time_synchronization",
    7: "who_has", 8: "who_is", 9: "utc_time_synchronization", 10: "write_group",
    11: "unconfirmed_cov_notification_multiple", 12: "unconfirmed_audit_notification",
    13: "who_am_i", 14: "you_are",
}

# Clause 21 BACnetSegmentation
BACNET_SEGMENTATION: dict[int, str] = {
    0: "segmented_both", 1: "segmented_transmit", 2: "segmented_receive", 3: "no_segmentation",
}

# 16.1.1.1.2 enable-disable of DeviceCommunicationControl
BACNET_ENABLE_DISABLE: dict[int, str] = {0: "enable", 1: "disable", 2: "disable_initiation"}

# 16.4.1.1.1 reinitialized state of ReinitializeDevice
BACNET_REINIT_STATES: dict[int, str] = {
    0: "coldstart", 1: "warmstart", 2: "start_backup", 3: "end_backup", 4: "start_restore",
    5: "end_restore", 6: "abort_restore", 7: "activate_changes",
}

# Annex J.2 BVLC functions, named as ICSNPP's bacnet.log spells them (in snake case)
BACNET_BVLC_FUNCTIONS: dict[int, str] = {
    0x00: "bvlc_result", 0x01: "write_broadcast_distribution_table",
    0x02: "read_broadcast_distribution_table", 0x03: "read_broadcast_distribution_table_ack",
    0x04: "forwarded_npdu", 0x05: "register_foreign_device", 0x06: "read_foreign_device_table",
    0x07: "read_foreign_device_table_ack", 0x08: "delete_foreign_device_table_entry",
    0x09: "distribute_broadcast_to_network", 0x0A: "original_unicast_npdu",
    0x0B: "original_broadcast_npdu", 0x0C: "secure_bvll",
}

# Annex J.2.1.1 BVLC-Result codes
BACNET_BVLC_RESULTS: dict[int, str] = {
    0x0000: "successful_completion", 0x0010: "write_broadcast_distribution_table_nak",
    0x0020: "read_broadcast_distribution_table_nak", 0x0030: "register_foreign_device_nak",
    0x0040: "read_foreign_device_table_nak", 0x0050: "delete_foreign_device_table_entry_nak",
    0x0060: "distribute_broadcast_to_network_nak",
}

# 6.2.4 network layer message types (0x80-0xFF proprietary, with a vendor id)
BACNET_NETWORK_MESSAGES: dict[int, str] = {
    0x00: "who_is_router_to_network", 0x01: "i_am_router_to_network",
    0x02: "i_could_be_router_to_network", 0x03: "reject_message_to_network",
    0x04: "router_busy_to_network", 0x05: "router_available_to_network",
    0x06: "initialize_routing_table", 0x07: "initialize_routing_table_ack",
    0x08: "establish_connection_to_network", 0x09: "disconnect_connection_to_network",
    0x0A: "challenge_request", 0x0B: "security_payload", 0x0C: "security_response",
    0x0D: "request_key_update", 0x0E: "update_key_set", 0x0F: "update_distribution_key",
    0x10: "request_master_key", 0x11: "set_master_key", 0x12: "what_is_network_number",
    0x13: "network_number_is",
}

# 6.4.4 Reject-Message-To-Network reasons
BACNET_NETWORK_REJECT_REASONS: dict[int, str] = {
    0: "other", 1: "not_directly_connected", 2: "router_busy", 3: "unknown_network_message",
    4: "message_too_long", 5: "security_error", 6: "addressing_error",
}


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
