"""Name tables of the ISO upper layers and MMS, as Wireshark spells them: session SPDUs and
REFUSE reasons (ISO 8327-1), ACSE APDUs, results and diagnostics (ISO 8650-1), and of ISO
9506-2 (2003) the MMSpdu choices, reject reasons and initiate fields, the services by their
confirmed service choice with the codes of the ones the parser reads, ServiceError classes and
codes, DataAccessError, GetNameList object classes, status and program invocation states. Data
only, kept apart from the parsers in ``mms.py`` and ``mms_ber.py``.
"""
from __future__ import annotations

# ISO 8327-1 clause 8: SPDU identifiers (as Wireshark's packet-ses.h lists them). SI 1 heading
# a TSDU is GIVE TOKENS (category 0); after it, SI 1 is DATA TRANSFER (category 2).
SES_SPDUS: dict[int, str] = {
    1: "give_tokens", 2: "please_tokens", 5: "expedited_data", 7: "prepare",
    8: "not_finished", 9: "finish", 10: "disconnect", 12: "refuse", 13: "connect",
    14: "accept", 15: "connect_data_overflow", 16: "overflow_accept",
    21: "give_tokens_confirm", 22: "give_tokens_ack", 25: "abort", 26: "abort_accept",
    29: "activity_resume", 33: "typed_data", 34: "resynchronize_ack", 41: "major_sync_point",
    42: "major_sync_ack", 45: "activity_start", 48: "exception_data", 49: "minor_sync_point",
    50: "minor_sync_ack", 53: "resynchronize", 57: "activity_discard",
    58: "activity_discard_ack", 61: "capability_data", 62: "capability_data_ack",
}
SES_GT_DT, SES_PT, SES_FINISH, SES_DISCONNECT, SES_REFUSE = 1, 2, 9, 10, 12
SES_CONNECT, SES_ACCEPT, SES_ABORT = 13, 14, 25
SES_IS_REQUEST: dict[int, bool] = {SES_CONNECT: True, SES_ACCEPT: False, SES_REFUSE: False,
                                   SES_FINISH: True, SES_DISCONNECT: False}
# ISO 8327-1 parameter codes: User Data and Extended User Data (PGI), Reason Code (PI)
SES_USER_DATA, SES_EXTENDED_USER_DATA, SES_REASON_CODE = 193, 194, 50
SES_LONG_LENGTH = 0xFF         # ISO 8327-1 LI: 0xFF, then the length in two octets
# ISO 8327-1 REFUSE reason codes
SES_REFUSE_REASONS: dict[int, str] = {
    0: "rejection_not_specified", 1: "temporary_congestion", 2: "rejection_by_ss_user",
    129: "session_selector_unknown", 130: "ss_user_not_attached", 131: "spm_congestion",
    132: "versions_not_supported", 133: "spm_rejection", 134: "spm_implementation_restriction",
}

# ISO 8650-1 APDUs: [APPLICATION n] IMPLICIT SEQUENCE
ACSE_APDUS = ("aarq", "aare", "rlrq", "rlre", "abrt")
ACSE_KINDS = ("associate", "associate", "release", "release", "abort")
ACSE_IS_REQUEST = (True, False, True, False, None)
ACSE_USER_INFORMATION = 30     # [30] IMPLICIT Association-information
ACSE_PASSWORD = "2.2.3.1"      # authentication-mechanism password-1
# AARQ/AARE context tags whose (explicit) value is an AP title or AE qualifier
ACSE_TITLES: tuple[dict[int, str], dict[int, str]] = (
    {2: "called_ap_title", 3: "called_ae_qualifier", 6: "calling_ap_title",
     7: "calling_ae_qualifier"},
    {4: "responding_ap_title", 5: "responding_ae_qualifier"},
)
ACSE_RESULTS = ("accepted", "rejected_permanent", "rejected_transient")
ACSE_USER_DIAGNOSTICS = (
    "null", "no_reason_given", "application_context_name_not_supported",
    "calling_ap_title_not_recognized", "calling_ap_invocation_identifier_not_recognized",
    "calling_ae_qualifier_not_recognized", "calling_ae_invocation_identifier_not_recognized",
    "called_ap_title_not_recognized", "called_ap_invocation_identifier_not_recognized",
    "called_ae_qualifier_not_recognized", "called_ae_invocation_identifier_not_recognized",
    "authentication_mechanism_name_not_recognized", "authentication_mechanism_name_required",
    "authentication_failure", "authentication_required",
)
ACSE_PROVIDER_DIAGNOSTICS = ("null", "no_reason_given", "no_common_acse_version")
ACSE_RELEASE_REASONS = ({0: "normal", 1: "urgent", 30: "user_defined"},
                        {0: "normal", 1: "not_finished", 30: "user_defined"})
ACSE_ABORT_SOURCES = ("acse_service_user", "acse_service_provider")
ACSE_AUTHENTICATION = ("charstring", "bitstring", "external", "other")

# ISO 9506-2 MMSpdu choices, tshark's names in snake case without "PDU"
MMS_PDUS = (
    "confirmed_request", "confirmed_response", "confirmed_error", "unconfirmed", "reject",
    "cancel_request", "cancel_response", "cancel_error", "initiate_request",
    "initiate_response", "initiate_error", "conclude_request", "conclude_response",
    "conclude_error",
)
PDU_REQUEST, PDU_RESPONSE, PDU_ERROR, PDU_UNCONFIRMED, PDU_REJECT = 0, 1, 2, 3, 4
PDU_CANCEL_ERROR, PDU_INITIATE_ERROR, PDU_CONCLUDE_ERROR = 7, 10, 13
MMS_PDU_KINDS = ("", "", "", "", "reject", "cancel", "cancel", "cancel_exception", "initiate",
                 "initiate", "initiate_exception", "conclude", "conclude",
                 "conclude_exception")
MMS_PDU_IS_REQUEST = (True, False, False, None, None, True, False, False, True, False, False,
                      True, False, False)
# ISO 9506-2 UnconfirmedService choices
MMS_UNCONFIRMED = ("information_report", "unsolicited_status", "event_notification")
# ISO 9506-2 RejectPDU: the rejected PDU (tag 1-11) and its reason codes
_OTHER_INVOKE = {0: "other", 1: "invalid_invoke_id"}
MMS_REJECTS: dict[int, tuple[str, dict[int, str]]] = {
    1: ("confirmed_request", {0: "other", 1: "unrecognized_service", 2: "unrecognized_modifier",
                              3: "invalid_invoke_id", 4: "invalid_argument",
                              5: "invalid_modifier", 6: "max_serv_outstanding_exceeded",
                              8: "max_recursion_exceeded", 9: "value_out_of_range"}),
    2: ("confirmed_response", {0: "other", 1: "unrecognized_service", 2: "invalid_invoke_id",
                               3: "invalid_result", 5: "max_recursion_exceeded",
                               6: "value_out_of_range"}),
    3: ("confirmed_error", {0: "other", 1: "unrecognized_service", 2: "invalid_invoke_id",
                            3: "invalid_service_error", 4: "value_out_of_range"}),
    4: ("unconfirmed", {0: "other", 1: "unrecognized_service", 2: "invalid_argument",
                        3: "max_recursion_exceeded", 4: "value_out_of_range"}),
    5: ("pdu_error", {0: "unknown_pdu_type", 1: "invalid_pdu", 2: "illegal_acse_mapping"}),
    6: ("cancel_request", _OTHER_INVOKE),
    7: ("cancel_response", _OTHER_INVOKE),
    8: ("cancel_error", {0: "other", 1: "invalid_invoke_id", 2: "invalid_service_error",
                         3: "value_out_of_range"}),
    9: ("conclude_request", {0: "other", 1: "invalid_argument"}),
    10: ("conclude_response", {0: "other", 1: "invalid_result"}),
    11: ("conclude_error", {0: "other", 1: "invalid_service_error", 2: "value_out_of_range"}),
}
# ISO 9506-2 Initiate-Request/ResponsePDU [0]-[3] and the init detail's [0]-[2]
MMS_INITIATE_FIELDS = ("local_detail", "max_serv_outstanding_calling",
                       "max_serv_outstanding_called", "data_structure_nesting_level")
MMS_INITIATE_DETAIL = ("version_number", "parameter_cbb", "services_supported")
IEC61850_REPORT = "RPT"        # IEC 61850-8-1 clause 17: reports name this variable list

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
