"""Name tables of MMS (ISO 9506-2 (2003), as Wireshark's mms.asn spells it): the services by
their confirmed service choice, the codes of the ones the parser reads, ServiceError classes and
codes, DataAccessError, GetNameList object classes, status and program invocation states. Data
only, kept apart from the parsers in ``mms_ber.py`` and ``mms.py``.
"""
from __future__ import annotations

MMS_SERVICES = (
    "status", "get_name_list", "identify", "rename", "read", "write",
    "get_variable_access_attributes", "define_named_variable", "define_scattered_access",
    "get_scattered_access_attributes", "delete_variable_access", "define_named_variable_list",
    "get_named_variable_list_attributes", "delete_named_variable_list", "define_named_type",
    "get_named_type_attributes", "delete_named_type", "input", "output", "take_control",
    "relinquish_control", "define_semaphore", "delete_semaphore", "report_semaphore_status",
    "report_pool_semaphore_status", "report_semaphore_entry_status",
    "initiate_download_sequence", "download_segment", "terminate_download_sequence",
    "initiate_upload_sequence", "upload_segment", "terminate_upload_sequence",
    "request_domain_download", "request_domain_upload", "load_domain_content",
    "store_domain_content", "delete_domain", "get_domain_attributes",
    "create_program_invocation", "delete_program_invocation", "start", "stop", "resume",
    "reset", "kill", "get_program_invocation_attributes", "obtain_file",
    "define_event_condition", "delete_event_condition", "get_event_condition_attributes",
    "report_event_condition_status", "alter_event_condition_monitoring", "trigger_event",
    "define_event_action", "delete_event_action", "get_event_action_attributes",
    "report_event_action_status", "define_event_enrollment", "delete_event_enrollment",
    "alter_event_enrollment", "report_event_enrollment_status",
    "get_event_enrollment_attributes", "acknowledge_event_notification", "get_alarm_summary",
    "get_alarm_enrollment_summary", "read_journal", "write_journal", "initialize_journal",
    "report_journal_status", "create_journal", "delete_journal", "get_capability_list",
    "file_open", "file_read", "file_close", "file_rename", "file_delete", "file_directory",
)

SVC_STATUS, SVC_GET_NAME_LIST, SVC_IDENTIFY, SVC_RENAME, SVC_READ, SVC_WRITE = 0, 1, 2, 3, 4, 5
SVC_GET_VAA, SVC_DEFINE_NVL, SVC_GET_NVLA = 6, 11, 12
SVC_INITIATE_UPLOAD, SVC_OBTAIN_FILE, SVC_GET_PI_ATTRIBUTES = 29, 46, 45
SVC_FILE_OPEN, SVC_FILE_READ, SVC_FILE_RENAME, SVC_FILE_DELETE, SVC_FILE_DIRECTORY = \
    72, 73, 75, 76, 77
# Requests whose value is one ObjectName, or starts with one as [0] (ISO 9506-2 clauses 10-19)
SVC_OBJECT_NAME = frozenset({9, 12, 15, 22, 23, 49, 50, 55, 56, 60, 68})
SVC_FIRST_NAME = frozenset({7, 8, 19, 20, 21, 24, 25, 47, 51, 52, 53, 57, 59, 62, 65, 66, 67,
                            69, 70})
SVC_DELETE_LIST = frozenset({10, 13, 16})          # scope, [1] list of names, [2] domain
SVC_DOMAIN_ID = frozenset({27, 29, 36, 37})        # value: the domain name (Identifier)
SVC_PI_ID = frozenset({39, 45})                    # value: the program invocation name
SVC_DOMAIN_SEQ = frozenset({26, 28, 32, 33, 34, 35})   # [0] domain name, file name after
SVC_DOMAIN_FILE_TAG = {32: 4, 33: 1, 34: 4, 35: 1}
SVC_PI_SEQ = frozenset({38, 40, 41, 42, 43, 44})   # [0] program invocation name
SVC_ULSM = frozenset({30, 31})
SVC_FRSM = frozenset({73, 74})
SVC_SEGMENT = frozenset({27, 30})                  # responses: [0] load data, [1] more
SVC_NUMBERS = frozenset({10, 13, 16})              # responses: matched, deleted

# ISO 9506-2 ServiceError: errorClass choices and the codes of each
MMS_ERROR_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vmd_state", ("other", "vmd_state_conflict", "vmd_operational_problem",
                   "domain_transfer_problem", "state_machine_id_invalid")),
    ("application_reference", ("other", "application_unreachable", "connection_lost",
                               "application_reference_invalid", "context_unsupported")),
    ("definition", ("other", "object_undefined", "invalid_address", "type_unsupported",
                    "type_inconsistent", "object_exists", "object_attribute_inconsistent")),
    ("resource", ("other", "memory_unavailable", "processor_resource_unavailable",
                  "mass_storage_unavailable", "capability_unavailable", "capability_unknown")),
    ("service", ("other", "primitives_out_of_sequence", "object_state_conflict", "pdu_size",
                 "continuation_invalid", "object_constraint_conflict")),
    ("service_preempt", ("other", "timeout", "deadlock", "cancel")),
    ("time_resolution", ("other", "unsupportable_time_resolution")),
    ("access", ("other", "object_access_unsupported", "object_non_existent",
                "object_access_denied", "object_invalidated")),
    ("initiate", ("other", "version_incompatible", "max_segment_insufficient",
                  "max_services_outstanding_calling_insufficient",
                  "max_services_outstanding_called_insufficient", "service_cbb_insufficient",
                  "parameter_cbb_insufficient", "nesting_level_insufficient")),
    ("conclude", ("other", "further_communication_required")),
    ("cancel", ("other", "invoke_id_unknown", "cancel_not_possible")),
    ("file", ("other", "filename_ambiguous", "file_busy", "filename_syntax_error",
              "content_type_invalid", "position_invalid", "file_access_denied",
              "file_non_existent", "duplicate_filename", "insufficient_space_in_filestore")),
    ("others", ()),
)
# ISO 9506-2 DataAccessError (variable access)
MMS_DATA_ACCESS_ERRORS = (
    "object_invalidated", "hardware_fault", "temporarily_unavailable", "object_access_denied",
    "object_undefined", "invalid_address", "type_unsupported", "type_inconsistent",
    "object_attribute_inconsistent", "object_access_unsupported", "object_non_existent",
    "object_value_invalid",
)

# ISO 9506-2 GetNameList ObjectClass (VMD support)
MMS_OBJECT_CLASSES = (
    "named_variable", "scattered_access", "named_variable_list", "named_type", "semaphore",
    "event_condition", "event_action", "event_enrollment", "journal", "domain",
    "program_invocation", "operator_station", "data_exchange", "access_control_list",
)
MMS_OBJECT_SCOPES = ("vmd_specific", "domain_specific", "aa_specific")
# ISO 9506-2 Status-Response (VMD support)
MMS_LOGICAL_STATUS = ("state_changes_allowed", "no_state_changes_allowed",
                      "limited_services_permitted", "support_services_allowed")
MMS_PHYSICAL_STATUS = ("operational", "partially_operational", "inoperable",
                       "needs_commissioning")
# ISO 9506-2 ProgramInvocationState (program invocation management)
MMS_PI_STATES = ("non_existent", "unrunable", "idle", "running", "stopped", "starting",
                 "stopping", "resuming", "resetting")
