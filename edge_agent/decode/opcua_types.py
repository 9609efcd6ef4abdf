"""OPC UA binary encoding of the built-in types and the tables that name what they carry.

Spec: OPC 10000-6 "UA Part 6: Mappings" 5.2.2 (built-in types: String 5.2.2.4, Guid 5.2.2.6,
ByteString 5.2.2.7, NodeId 5.2.2.9, ExpandedNodeId 5.2.2.10, DiagnosticInfo 5.2.2.12,
QualifiedName 5.2.2.13, LocalizedText 5.2.2.14, ExtensionObject 5.2.2.15, Variant 5.2.2.16,
DataValue 5.2.2.17), 5.2.5 (arrays: Int32 length, -1 for null); structures and enumerations
from OPC 10000-4 (RequestHeader, ResponseHeader, ApplicationDescription, EndpointDescription,
UserTokenPolicy) and the ``*_Encoding_DefaultBinary`` NodeIds of OPC 10000-6 Annex A
(NodeIds.csv). Little-endian throughout.

Readers take ``(buf, off, end)`` and return the value and the offset after it; they raise
``dpkt.NeedData`` when a length points past ``end`` and ``ValueError`` on an encoding byte the
spec does not define, so one ``try`` in the caller turns any of it into a named anomaly.
Everything they keep is bounded: strings to ``OPCUA_MAX_STRING`` characters, nesting to
``OPCUA_MAX_DEPTH`` levels.
"""
from __future__ import annotations

import base64
import re
import struct
from typing import Any

import dpkt

OPCUA_MAX_STRING = 512          # characters kept of a string (URLs may reach 4096 bytes)
OPCUA_MAX_DEPTH = 8             # nested Variant / DataValue / DiagnosticInfo levels followed

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_BU16 = struct.Struct("<BH")
_HI = struct.Struct("<HI")
_GUID = struct.Struct("<IHH8s")

# Part 6 5.2.2.16 Table 1 built-in type ids -> encoded size, for the fixed-size ones.
UA_FIXED_SIZES: dict[int, int] = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 4, 8: 8, 9: 8, 10: 4,
                                  11: 8, 13: 8, 14: 16, 19: 4}
# Scalar built-in types whose value a Write record keeps (Part 6 5.2.2.1-5.2.2.5).
UA_SCALARS: dict[int, struct.Struct] = {
    1: struct.Struct("<?"), 2: struct.Struct("<b"), 3: struct.Struct("<B"),
    4: struct.Struct("<h"), 5: struct.Struct("<H"), 6: struct.Struct("<i"),
    7: struct.Struct("<I"), 8: struct.Struct("<q"), 9: struct.Struct("<Q"),
    10: struct.Struct("<f"), 11: struct.Struct("<d"), 19: struct.Struct("<I"),
}

# NodeIds.csv: the DefaultBinary encoding of every service request and response (and the
# ServiceFault that replaces a response), by numeric id in namespace 0.
UA_SERVICES_CAMEL: dict[int, str] = {
    397: "ServiceFault",
    422: "FindServersRequest", 425: "FindServersResponse",
    428: "GetEndpointsRequest", 431: "GetEndpointsResponse",
    437: "RegisterServerRequest", 440: "RegisterServerResponse",
    446: "OpenSecureChannelRequest", 449: "OpenSecureChannelResponse",
    452: "CloseSecureChannelRequest", 455: "CloseSecureChannelResponse",
    461: "CreateSessionRequest", 464: "CreateSessionResponse",
    467: "ActivateSessionRequest", 470: "ActivateSessionResponse",
    473: "CloseSessionRequest", 476: "CloseSessionResponse",
    479: "CancelRequest", 482: "CancelResponse",
    488: "AddNodesRequest", 491: "AddNodesResponse",
    494: "AddReferencesRequest", 497: "AddReferencesResponse",
    500: "DeleteNodesRequest", 503: "DeleteNodesResponse",
    506: "DeleteReferencesRequest", 509: "DeleteReferencesResponse",
    527: "BrowseRequest", 530: "BrowseResponse",
    533: "BrowseNextRequest", 536: "BrowseNextResponse",
    554: "TranslateBrowsePathsToNodeIdsRequest", 557: "TranslateBrowsePathsToNodeIdsResponse",
    560: "RegisterNodesRequest", 563: "RegisterNodesResponse",
    566: "UnregisterNodesRequest", 569: "UnregisterNodesResponse",
    615: "QueryFirstRequest", 618: "QueryFirstResponse",
    621: "QueryNextRequest", 624: "QueryNextResponse",
    631: "ReadRequest", 634: "ReadResponse",
    664: "HistoryReadRequest", 667: "HistoryReadResponse",
    673: "WriteRequest", 676: "WriteResponse",
    700: "HistoryUpdateRequest", 703: "HistoryUpdateResponse",
    712: "CallRequest", 715: "CallResponse",
    751: "CreateMonitoredItemsRequest", 754: "CreateMonitoredItemsResponse",
    763: "ModifyMonitoredItemsRequest", 766: "ModifyMonitoredItemsResponse",
    769: "SetMonitoringModeRequest", 772: "SetMonitoringModeResponse",
    775: "SetTriggeringRequest", 778: "SetTriggeringResponse",
    781: "DeleteMonitoredItemsRequest", 784: "DeleteMonitoredItemsResponse",
    787: "CreateSubscriptionRequest", 790: "CreateSubscriptionResponse",
    793: "ModifySubscriptionRequest", 796: "ModifySubscriptionResponse",
    799: "SetPublishingModeRequest", 802: "SetPublishingModeResponse",
    826: "PublishRequest", 829: "PublishResponse",
    832: "RepublishRequest", 835: "RepublishResponse",
    841: "TransferSubscriptionsRequest", 844: "TransferSubscriptionsResponse",
    847: "DeleteSubscriptionsRequest", 850: "DeleteSubscriptionsResponse",
    12208: "FindServersOnNetworkRequest", 12209: "FindServersOnNetworkResponse",
    12211: "RegisterServer2Request", 12212: "RegisterServer2Response",
}


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


UA_SERVICES: dict[int, str] = {k: snake(v) for k, v in UA_SERVICES_CAMEL.items()}
UA_SERVICE_FAULT = 397

# OPC 10000-4 StatusCode / OPC 10000-6 Annex A (StatusCode.csv): the codes seen on the wire
# most, by their top 16 bits (the low 16 bits carry info flags and are masked off).
UA_STATUS_CODES: dict[int, str] = {
    0x00000000: "good", 0x40920000: "uncertain_initial_value",
    0x80010000: "bad_unexpected_error", 0x80020000: "bad_internal_error",
    0x80030000: "bad_out_of_memory", 0x80040000: "bad_resource_unavailable",
    0x80050000: "bad_communication_error", 0x80060000: "bad_encoding_error",
    0x80070000: "bad_decoding_error", 0x80080000: "bad_encoding_limits_exceeded",
    0x800A0000: "bad_timeout", 0x800B0000: "bad_service_unsupported",
    0x800C0000: "bad_shutdown", 0x800D0000: "bad_server_not_connected",
    0x800E0000: "bad_server_halted", 0x800F0000: "bad_nothing_to_do",
    0x80100000: "bad_too_many_operations", 0x80120000: "bad_certificate_invalid",
    0x80130000: "bad_security_checks_failed", 0x801A0000: "bad_certificate_untrusted",
    0x801F0000: "bad_user_access_denied", 0x80200000: "bad_identity_token_invalid",
    0x80210000: "bad_identity_token_rejected", 0x80220000: "bad_secure_channel_id_invalid",
    0x80230000: "bad_invalid_timestamp", 0x80240000: "bad_nonce_invalid",
    0x80250000: "bad_session_id_invalid", 0x80260000: "bad_session_closed",
    0x80270000: "bad_session_not_activated", 0x80280000: "bad_subscription_id_invalid",
    0x802A0000: "bad_request_header_invalid", 0x80310000: "bad_no_communication",
    0x80320000: "bad_waiting_for_initial_data", 0x80330000: "bad_node_id_invalid",
    0x80340000: "bad_node_id_unknown", 0x80350000: "bad_attribute_id_invalid",
    0x80360000: "bad_index_range_invalid", 0x80380000: "bad_data_encoding_invalid",
    0x803A0000: "bad_not_readable", 0x803B0000: "bad_not_writable",
    0x803D0000: "bad_not_supported", 0x80400000: "bad_not_implemented",
    0x804F0000: "bad_server_uri_invalid", 0x80530000: "bad_request_type_invalid",
    0x80540000: "bad_security_mode_rejected", 0x80550000: "bad_security_policy_rejected",
    0x80560000: "bad_too_many_sessions", 0x80570000: "bad_user_signature_invalid",
    0x80580000: "bad_application_signature_invalid", 0x80730000: "bad_write_not_supported",
    0x80740000: "bad_type_mismatch", 0x80750000: "bad_method_invalid",
    0x80760000: "bad_arguments_missing", 0x80780000: "bad_too_many_publish_requests",
    0x80790000: "bad_no_subscription", 0x807D0000: "bad_tcp_server_too_busy",
    0x807E0000: "bad_tcp_message_type_invalid", 0x807F0000: "bad_tcp_secure_channel_unknown",
    0x80800000: "bad_tcp_message_too_large", 0x80810000: "bad_tcp_not_enough_resources",
    0x80820000: "bad_tcp_internal_error", 0x80830000: "bad_tcp_endpoint_url_invalid",
    0x80840000: "bad_request_interrupted", 0x80850000: "bad_request_timeout",
    0x80860000: "bad_secure_channel_closed", 0x80870000: "bad_secure_channel_token_unknown",
    0x80880000: "bad_sequence_number_invalid", 0x808A0000: "bad_not_connected",
    0x808B0000: "bad_device_failure", 0x808C0000: "bad_sensor_failure",
    0x808D0000: "bad_out_of_service", 0x809B0000: "bad_no_data",
    0x80AB0000: "bad_invalid_argument", 0x80AE0000: "bad_connection_closed",
    0x80B70000: "bad_max_connections_reached", 0x80B80000: "bad_request_too_large",
    0x80B90000: "bad_response_too_large", 0x80BE0000: "bad_protocol_version_unsupported",
    0x80DB0000: "bad_too_many_monitored_items", 0x810E0000: "bad_license_expired",
}

# OPC 10000-4 enumerations MessageSecurityMode, SecurityTokenRequestType, ApplicationType; the
# identity tokens of ActivateSession by their DefaultBinary encoding id (NodeIds.csv).
UA_SECURITY_MODES = {0: "invalid", 1: "none", 2: "sign", 3: "sign_and_encrypt"}
UA_REQUEST_TYPES = {0: "issue", 1: "renew"}
UA_APPLICATION_TYPES = {0: "server", 1: "client", 2: "client_and_server", 3: "discovery_server"}
UA_IDENTITY_TOKENS = {321: "anonymous", 324: "user_name", 327: "certificate",
                      940: "issued_token"}


def status_name(code: int) -> str:
    return UA_STATUS_CODES.get(code & 0xFFFF0000, "unknown")


def need(end: int, stop: int) -> None:
    if stop > end:
        raise dpkt.NeedData("opcua field past the end")


def read_string(b: bytes, off: int, end: int) -> tuple[str | None, int]:
    """String and ByteString-as-text (5.2.2.4): Int32 length, -1 is null."""
    need(end, off + 4)
    n = _I32.unpack_from(b, off)[0]
    off += 4
    if n < 0:
        return None, off
    need(end, off + n)
    return b[off:off + min(n, OPCUA_MAX_STRING)].decode("utf-8", "replace"), off + n


def skip_bytes(b: bytes, off: int, end: int) -> tuple[int, int]:
    """A ByteString skipped: its length (-1 for null) and the offset after it."""
    need(end, off + 4)
    n = _I32.unpack_from(b, off)[0]
    stop = off + 4 + max(n, 0)
    need(end, stop)
    return n, stop


def array_len(b: bytes, off: int, end: int) -> tuple[int, int]:
    need(end, off + 4)
    n = _I32.unpack_from(b, off)[0]
    if n > end - off:         # every element takes at least one byte
        raise dpkt.NeedData("opcua array longer than the message")
    return max(n, 0), off + 4


def skip_strings(b: bytes, off: int, end: int) -> int:
    n, off = array_len(b, off, end)
    for _ in range(n):
        off = skip_bytes(b, off, end)[1]
    return off


def read_nodeid(b: bytes, off: int, end: int, expanded: bool = False) -> tuple[str, int, int]:
    """NodeId (5.2.2.9) in the standard text form ("i=2258", "ns=2;s=Pump"), its numeric id
    (-1 when not numeric) and the offset after it."""
    need(end, off + 1)
    enc = b[off]
    kind = enc & 0x0F if expanded else enc
    off += 1
    if kind == 0:
        need(end, off + 1)
        ns, ident, off = 0, b[off], off + 1
    elif kind == 1:
        need(end, off + 3)
        ns, ident = _BU16.unpack_from(b, off)
        off += 3
    elif kind == 2:
        need(end, off + 6)
        ns, ident = _HI.unpack_from(b, off)
        off += 6
    elif kind in (3, 4, 5):
        need(end, off + 2)
        ns = _U16.unpack_from(b, off)[0]
        off += 2
        if kind == 3:
            s, off = read_string(b, off, end)
            text = f"s={s or ''}"
        elif kind == 4:
            need(end, off + 16)
            d1, d2, d3, d4 = _GUID.unpack_from(b, off)
            text = f"g={d1:08x}-{d2:04x}-{d3:04x}-{d4[:2].hex()}-{d4[2:].hex()}"
            off += 16
        else:
            n, stop = skip_bytes(b, off, end)
            text = "b=" + base64.b64encode(b[off + 4:off + 4 + min(max(n, 0), 64)]).decode()
            off = stop
        if expanded:
            off = _expanded_tail(b, off, end, enc)
        return (f"ns={ns};{text}" if ns else text), -1, off
    else:
        raise ValueError(f"NodeId encoding {enc:#x}")
    if expanded:
        off = _expanded_tail(b, off, end, enc)
    return (f"ns={ns};i={ident}" if ns else f"i={ident}"), (ident if ns == 0 else -1), off


def _expanded_tail(b: bytes, off: int, end: int, enc: int) -> int:
    """ExpandedNodeId (5.2.2.10): NamespaceUri when bit 0x80, ServerIndex when bit 0x40."""
    if enc & 0x80:
        off = skip_bytes(b, off, end)[1]
    if enc & 0x40:
        off += 4
        need(end, off)
    return off


def skip_nodeid(b: bytes, off: int, end: int) -> int:
    return read_nodeid(b, off, end)[2]


def skip_extension_object(b: bytes, off: int, end: int) -> tuple[int, int]:
    """ExtensionObject (5.2.2.15): TypeId NodeId, encoding byte, optional length-prefixed body.
    Returns the TypeId's numeric id and the offset after the object."""
    _, type_id, off = read_nodeid(b, off, end)
    need(end, off + 1)
    enc = b[off]
    off += 1
    if enc in (1, 2):
        off = skip_bytes(b, off, end)[1]
    elif enc:
        raise ValueError(f"ExtensionObject encoding {enc:#x}")
    return type_id, off


def skip_diagnostic_info(b: bytes, off: int, end: int, depth: int = 0) -> int:
    """DiagnosticInfo (5.2.2.12): the mask says which fields follow."""
    need(end, off + 1)
    mask = b[off]
    off += 1
    off += 4 * bin(mask & 0x0F).count("1")     # symbolic id, namespace, locale, text: Int32
    need(end, off)
    if mask & 0x10:
        off = skip_bytes(b, off, end)[1]
    if mask & 0x20:
        off += 4
        need(end, off)
    if mask & 0x40:
        if depth >= OPCUA_MAX_DEPTH:
            raise ValueError("DiagnosticInfo nested too deep")
        off = skip_diagnostic_info(b, off, end, depth + 1)
    return off


def read_localized_text(b: bytes, off: int, end: int) -> tuple[str | None, int]:
    """LocalizedText (5.2.2.14): mask 0x01 locale, 0x02 text; returns the text."""
    need(end, off + 1)
    mask = b[off]
    off += 1
    if mask & 0x01:
        off = skip_bytes(b, off, end)[1]
    text = None
    if mask & 0x02:
        text, off = read_string(b, off, end)
    return text, off


def _skip_one(b: bytes, off: int, end: int, vtype: int, depth: int) -> int:
    size = UA_FIXED_SIZES.get(vtype)
    if size is not None:
        off += size
        need(end, off)
        return off
    if vtype in (12, 15, 16):          # String, ByteString, XmlElement
        return skip_bytes(b, off, end)[1]
    if vtype == 17:
        return skip_nodeid(b, off, end)
    if vtype == 18:
        return read_nodeid(b, off, end, True)[2]
    if vtype == 20:                    # QualifiedName: UInt16 namespace + String
        return skip_bytes(b, off + 2, end)[1]
    if vtype == 21:
        return read_localized_text(b, off, end)[1]
    if vtype == 22:
        return skip_extension_object(b, off, end)[1]
    if depth >= OPCUA_MAX_DEPTH:
        raise ValueError("Variant nested too deep")
    if vtype == 23:
        return skip_data_value(b, off, end, depth + 1)[1]
    if vtype == 24:
        return read_variant(b, off, end, depth + 1)[1]
    if vtype == 25:
        return skip_diagnostic_info(b, off, end, depth + 1)
    raise ValueError(f"Variant type {vtype}")


def read_variant(b: bytes, off: int, end: int, depth: int = 0) -> tuple[Any, int]:
    """Variant (5.2.2.16): the value when it is a scalar number, boolean or string, else None."""
    need(end, off + 1)
    mask = b[off]
    off += 1
    vtype = mask & 0x3F
    if not mask:
        return None, off
    if mask & 0x80:
        n, off = array_len(b, off, end)
        size = UA_FIXED_SIZES.get(vtype)
        if size is not None:
            off += n * size
            need(end, off)
        else:
            for _ in range(n):
                off = _skip_one(b, off, end, vtype, depth)
        if mask & 0x40:
            dims, off = array_len(b, off, end)
            off += 4 * dims
            need(end, off)
        return None, off
    scalar = UA_SCALARS.get(vtype)
    if scalar is not None:
        need(end, off + scalar.size)
        return scalar.unpack_from(b, off)[0], off + scalar.size
    if vtype == 12:
        return read_string(b, off, end)
    return None, _skip_one(b, off, end, vtype, depth)


def skip_data_value(b: bytes, off: int, end: int, depth: int = 0) -> tuple[Any, int]:
    """DataValue (5.2.2.17): value, status, source/server timestamps and picoseconds."""
    need(end, off + 1)
    mask = b[off]
    off += 1
    value = None
    if mask & 0x01:
        value, off = read_variant(b, off, end, depth)
    off += (4 if mask & 0x02 else 0) + (8 if mask & 0x04 else 0) + (8 if mask & 0x08 else 0)
    off += (2 if mask & 0x10 else 0) + (2 if mask & 0x20 else 0)
    need(end, off)
    return value, off


def skip_request_header(b: bytes, off: int, end: int) -> tuple[int, int]:
    """RequestHeader (Part 4): authentication token, timestamp, request handle, return
    diagnostics, audit entry id, timeout hint, additional header. Returns the handle."""
    off = skip_nodeid(b, off, end)
    need(end, off + 16)
    handle = _U32.unpack_from(b, off + 8)[0]
    off = skip_bytes(b, off + 16, end)[1]
    need(end, off + 4)
    return handle, skip_extension_object(b, off + 4, end)[1]


def skip_response_header(b: bytes, off: int, end: int) -> tuple[int, int, int]:
    """ResponseHeader (Part 4): timestamp, request handle, service result, diagnostics, string
    table, additional header. Returns the handle and the service result."""
    need(end, off + 16)
    handle, result = struct.unpack_from("<II", b, off + 8)
    off = skip_diagnostic_info(b, off + 16, end)
    off = skip_strings(b, off, end)
    return handle, result, skip_extension_object(b, off, end)[1]


def read_application(b: bytes, off: int, end: int) -> tuple[dict[str, Any], int]:
    """ApplicationDescription (Part 4): uris, name, type, gateway, discovery profile/urls."""
    app: dict[str, Any] = {}
    app["application_uri"], off = read_string(b, off, end)
    app["product_uri"], off = read_string(b, off, end)
    app["application_name"], off = read_localized_text(b, off, end)
    need(end, off + 4)
    atype = _U32.unpack_from(b, off)[0]
    app["application_type"] = UA_APPLICATION_TYPES.get(atype, "unknown")
    off = skip_bytes(b, off + 4, end)[1]        # gateway server uri
    off = skip_bytes(b, off, end)[1]            # discovery profile uri
    return app, skip_strings(b, off, end)       # discovery urls


def read_endpoint(b: bytes, off: int, end: int) -> tuple[dict[str, Any], int]:
    """EndpointDescription (Part 4): url, server, certificate, mode, policy, user tokens,
    transport profile, security level."""
    ep: dict[str, Any] = {}
    ep["endpoint_url"], off = read_string(b, off, end)
    ep["server"], off = read_application(b, off, end)
    off = skip_bytes(b, off, end)[1]
    need(end, off + 4)
    ep["security_mode"] = UA_SECURITY_MODES.get(_U32.unpack_from(b, off)[0], "unknown")
    uri, off = read_string(b, off + 4, end)
    ep["security_policy"] = policy_name(uri)
    n, off = array_len(b, off, end)
    for _ in range(n):                          # UserTokenPolicy: id, type, 3 strings
        off = skip_bytes(b, off, end)[1] + 4
        for _ in range(3):
            off = skip_bytes(b, off, end)[1]
    off = skip_bytes(b, off, end)[1]
    need(end, off + 1)
    return ep, off + 1


def policy_name(uri: str | None) -> str | None:
    """Security policy URI (Part 7 profiles) to its short name: the fragment after '#'."""
    if uri is None:
        return None
    return uri.rpartition("#")[2] or uri


def vendor_of(uri: str | None) -> str | None:
    """A vendor name from a product URI: ``urn:Vendor:...`` or ``http://host/...``."""
    if not uri:
        return None
    if uri.startswith("urn:"):
        part = uri[4:].split(":", 1)[0]
        return part or None
    if "://" in uri:
        host = uri.split("://", 1)[1].split("/", 1)[0]
        return host.removeprefix("www.") or None
    return None
