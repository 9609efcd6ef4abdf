"""OPC UA binary: UA Connection Protocol and UA Secure Conversation over TCP (UA TCP, UASC).

Spec: OPC 10000-6 "UA Part 6: Mappings" 7.1 (OPC UA Connection Protocol: 7.1.2.2 message
header, 7.1.2.3 Hello, 7.1.2.4 Acknowledge, 7.1.2.5 Error, 7.1.2.6 ReverseHello) and 6.7
(UA Secure Conversation: 6.7.2.2 message header with chunk type C/F/A, 6.7.2.3 asymmetric and
6.7.2.4 symmetric security headers, 6.7.2.5 sequence header, 6.7.3 abort chunks), with service
bodies from OPC 10000-4 read by :mod:`edge_agent.decode.opcua_types`. TCP port 4840 (IANA
"opc-ua-tcp"), elsewhere found by probe. Every multi-byte field is little-endian.

A record is one message chunk: ``message_type, chunk_type, message_size``; HEL and ACK add the
buffer sizes (and HEL the ``endpoint_url``); ERR and abort chunks ``status_code, status,
reason``; RHE ``server_uri, endpoint_url``; OPN ``secure_channel_id, security_policy_uri,
security_policy`` ("None", "Basic256Sha256" ...), the sender certificate length and whether a
receiver thumbprint is present; MSG and CLO ``secure_channel_id, token_id``. When the channel's
policy is None (remembered per flow from its OPN) or its messages are only signed, the sequence
header and body are readable: ``sequence_number, request_id, service_type_id, service``
("read_request"), ``request_handle``, responses ``status_code, status``, and per service what is
cheap and useful: node ids of Read/Write/Call/Browse (bounded) and written scalar values, the
OpenSecureChannel request type, security mode and lifetimes, endpoint URLs, session names,
the identity token type of ActivateSession, and the ApplicationDescription of CreateSession and
GetEndpoints, which becomes ``Message.identity`` of the sender. Chunks that cannot be read
(SignAndEncrypt) carry ``encrypted: true`` and no service. A request and its response share
a ``kind``, the service without its suffix ("read"); a response with a Bad service result, or
a ServiceFault, is ``<service>_exception`` (the request is found by its request id).

Anomalies (prefixed ``opcua.``): ``invalid_message_type``, ``invalid_chunk_type``,
``invalid_length`` (a size below the message's minimum, above the buffer size the peers
negotiated, or disagreeing with the bytes; a HEL endpoint URL over 4096 bytes),
``invalid_value`` (a buffer size below 8192, an enumeration out of range, an encoding byte the
spec does not define), ``unknown_service``, ``truncated``.
"""
from __future__ import annotations

import struct
from typing import Any, Callable

import dpkt

from edge_agent.decode import Decoder, Limits, Message, Session
from edge_agent.decode.opcua_types import (
    UA_IDENTITY_TOKENS, UA_REQUEST_TYPES, UA_SECURITY_MODES, UA_SERVICE_FAULT, UA_SERVICES,
    array_len, need, policy_name, read_application, read_endpoint, read_nodeid, read_string,
    read_variant, skip_bytes, skip_data_value, skip_nodeid, skip_request_header,
    skip_response_header, skip_strings, status_name, vendor_of)


class UAHeader(dpkt.Packet):
    """Message header (Part 6 7.1.2.2 and 6.7.2.2); ``data`` is the message body.

    Documents the wire layout and builds test vectors; the hot path reads the same fields with
    ``struct``.
    """

    __byte_order__ = "<"
    __hdr__ = (
        ("message_type", "3s", b"MSG"),
        ("chunk_type", "c", b"F"),
        ("message_size", "I", 8),       # the whole chunk, this header included
    )


class UAHello(dpkt.Packet):
    """Hello (7.1.2.3) and, without the endpoint URL in ``data``, Acknowledge (7.1.2.4)."""

    __byte_order__ = "<"
    __hdr__ = (
        ("protocol_version", "I", 0),
        ("receive_buffer_size", "I", 65535),
        ("send_buffer_size", "I", 65535),
        ("max_message_size", "I", 0),     # 0: no limit
        ("max_chunk_count", "I", 0),
    )


class UASymmetricHeader(dpkt.Packet):
    """Secure channel id (6.7.2.2), symmetric security header (6.7.2.4) and sequence header
    (6.7.2.5) of MSG and CLO chunks; ``data`` is the body."""

    __byte_order__ = "<"
    __hdr__ = (
        ("secure_channel_id", "I", 0),
        ("token_id", "I", 0),
        ("sequence_number", "I", 0),
        ("request_id", "I", 0),
    )


OPCUA_PORT = 4840                 # IANA opc-ua-tcp
OPCUA_HEADER_LEN = 8              # 7.1.2.2
# 7.1.2.2 / 6.7.2.2: smallest message of each type (empty strings, empty body), and the chunk
# types each may carry: connection-protocol messages and OPN/CLO are single 'F' chunks.
OPCUA_MIN_SIZE: dict[bytes, int] = {b"HEL": 32, b"ACK": 28, b"ERR": 16, b"RHE": 16,
                                    b"OPN": 32, b"CLO": 24, b"MSG": 24}
OPCUA_CHUNK_TYPES: dict[bytes, bytes] = {b"HEL": b"F", b"ACK": b"F", b"ERR": b"F", b"RHE": b"F",
                                         b"OPN": b"F", b"CLO": b"F", b"MSG": b"FCA"}
OPCUA_ACK_SIZE = 28               # 7.1.2.4: fixed layout
OPCUA_MAX_URL = 4096              # 7.1.2.3 / 7.1.2.6: EndpointUrl and ServerUri limit
OPCUA_MIN_BUFFER = 8192           # 7.1.2.3: smallest receive/send buffer a peer may offer
# Framing bound: negotiated buffer sizes are UInt32, real ones stay far below 16 MiB; the
# stream buffer bounds what is actually held.
OPCUA_MAX_CHUNK = 1 << 24
OPCUA_MAX_NODES = 16              # node ids kept per Read/Write/Call/Browse record
OPCUA_MAX_ENDPOINTS = 8           # endpoints kept per GetEndpoints/CreateSession response
OPCUA_POLICY_NONE = "None"
OPCUA_STATUS_BAD = 0x80000000    # OPC 10000-4 StatusCode: severity bits 10 = Bad
# Kinds: the Acknowledge answers the Hello, so both are "hello" (requests and responses share
# a kind across the agent).
OPCUA_CONNECTION_KINDS: dict[bytes, str] = {b"HEL": "hello", b"ACK": "hello",
                                            b"ERR": "error", b"RHE": "reverse_hello"}
OPCUA_SECURE_KINDS: dict[bytes, str] = {b"OPN": "open_secure_channel",
                                        b"CLO": "close_secure_channel",
                                        b"MSG": "encrypted_message"}

A_MESSAGE_TYPE = "opcua.invalid_message_type"
A_CHUNK_TYPE = "opcua.invalid_chunk_type"
A_LENGTH = "opcua.invalid_length"
A_VALUE = "opcua.invalid_value"
A_UNKNOWN_SERVICE = "opcua.unknown_service"
A_TRUNCATED = "opcua.truncated"

_HDR = struct.Struct("<3scI")
_HELLO = struct.Struct("<5I")
_U32 = struct.Struct("<I")
_II = struct.Struct("<II")
_III = struct.Struct("<III")
_OPN_RESP = struct.Struct("<IIIqI")     # server version, channel id, token id, created, lifetime

Fields = dict[str, Any]
Identity = dict[str, Any] | None


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "backslashreplace")


def _identity(app: dict[str, Any]) -> Identity:
    """An ApplicationDescription in the inventory's vocabulary."""
    ident: dict[str, Any] = {}
    if app.get("application_name"):
        ident["name"] = app["application_name"]
    if app.get("product_uri"):
        ident["product"] = app["product_uri"]
        vendor = vendor_of(app["product_uri"])
        if vendor:
            ident["vendor"] = vendor
    if app.get("application_uri"):
        ident["description"] = app["application_uri"]
    if app.get("application_type") not in (None, "unknown"):
        ident["device_type"] = f"opcua_{app['application_type']}"
    return ident or None


def _node_list(b: bytes, off: int, end: int, f: Fields,
               item: Callable[[bytes, int, int, list, int], int]) -> int:
    """An array of structures, each starting with a NodeId; keeps the first node ids."""
    n, off = array_len(b, off, end)
    f["node_count"] = n
    nodes: list[str] = []
    f["node_ids"] = nodes
    for i in range(n):
        off = item(b, off, end, nodes, i)
    return off


def _read_item(b: bytes, off: int, end: int, nodes: list, i: int) -> int:
    # ReadValueId: NodeId, AttributeId, IndexRange, DataEncoding (QualifiedName)
    text, _, off = read_nodeid(b, off, end)
    if i < OPCUA_MAX_NODES:
        nodes.append(text)
    off = skip_bytes(b, off + 4, end)[1]
    return skip_bytes(b, off + 2, end)[1]


def _browse_item(b: bytes, off: int, end: int, nodes: list, i: int) -> int:
    # BrowseDescription: NodeId, direction, reference type, include subtypes, masks
    text, _, off = read_nodeid(b, off, end)
    if i < OPCUA_MAX_NODES:
        nodes.append(text)
    off = skip_nodeid(b, off + 4, end) + 9
    need(end, off)
    return off


def _svc_read(sess: "OPCUASession", b: bytes, off: int, end: int, f: Fields) -> Identity:
    need(end, off + 12)                   # max age (Double), timestamps to return
    _node_list(b, off + 12, end, f, _read_item)
    return None


def _svc_browse(sess: "OPCUASession", b: bytes, off: int, end: int, f: Fields) -> Identity:
    off = skip_nodeid(b, off, end) + 16   # view: id, timestamp, version; max references
    need(end, off)
    _node_list(b, off, end, f, _browse_item)
    return None


def _svc_write(sess: "OPCUASession", b: bytes, off: int, end: int, f: Fields) -> Identity:
    values: list[Any] = []
    f["values"] = values

    def item(b: bytes, off: int, end: int, nodes: list, i: int) -> int:
        # WriteValue: NodeId, AttributeId, IndexRange, DataValue
        text, _, off = read_nodeid(b, off, end)
        off = skip_bytes(b, off + 4, end)[1]
        value, off = skip_data_value(b, off, end)
        if i < OPCUA_MAX_NODES:
            nodes.append(text)
            values.append(value)
        return off
    _node_list(b, off, end, f, item)
    return None


def _svc_call(sess: "OPCUASession", b: bytes, off: int, end: int, f: Fields) -> Identity:
    objects: list[str] = []
    f["object_ids"] = objects

    def item(b: bytes, off: int, end: int, nodes: list, i: int) -> int:
        # CallMethodRequest: ObjectId, MethodId, InputArguments (Variant[])
        obj, _, off = read_nodeid(b, off, end)
        method, _, off = read_nodeid(b, off, end)
        if i < OPCUA_MAX_NODES:
            objects.append(obj)
            nodes.append(method)
        n, off = array_len(b, off, end)
        for _ in range(n):
            off = read_variant(b, off, end)[1]
        return off
    _node_list(b, off, end, f, item)
    return None


def _enum(value: int, names: dict[int, str], an: list[str]) -> str:
    name = names.get(value)
    if name is None:
        an.append(A_VALUE)
    return name or "unknown"


def _svc_opn_request(sess: "OPCUASession", b: bytes, off: int, end: int, f: Fields) -> Identity:
    need(end, off + 12)
    version, rtype, mode = _III.unpack_from(b, off)
    f["client_protocol_version"] = version
    f["request_type"] = _enum(rtype, UA_REQUEST_TYPES, sess.an)
    f["security_mode"] = sess.mode = _enum(mode, UA_SECURITY_MODES, sess.an)
    off = skip_bytes(b, off + 12, end)[1]
    need(end, off + 4)
    f["requested_lifetime"] = _U32.unpack_from(b, off)[0]
    return None


def _svc_opn_response(sess: "OPCUASession", b: bytes, off: int, end: int, f: Fields) -> Identity:
    need(end, off + _OPN_RESP.size)
    version, _, token, _, lifetime = _OPN_RESP.unpack_from(b, off)
    f["server_protocol_version"] = version
    f["token_id"] = token
    f["revised_lifetime"] = lifetime
    return None


def _svc_get_endpoints_request(sess: "OPCUASession", b: bytes, off: int, end: int,
                               f: Fields) -> Identity:
    f["endpoint_url"] = read_string(b, off, end)[0]
    return None


def _endpoints(b: bytes, off: int, end: int, f: Fields) -> tuple[Identity, int]:
    n, off = array_len(b, off, end)
    eps = []
    ident = None
    for i in range(n):
        ep, off = read_endpoint(b, off, end)
        if i == 0:
            f["application"] = ep["server"]
            ident = _identity(ep["server"])
        if i < OPCUA_MAX_ENDPOINTS:
            eps.append({k: v for k, v in ep.items() if k != "server"})
    f["endpoints"] = eps
    return ident, off


def _svc_get_endpoints_response(sess: "OPCUASession", b: bytes, off: int, end: int,
                                f: Fields) -> Identity:
    return _endpoints(b, off, end, f)[0]


def _svc_create_session_request(sess: "OPCUASession", b: bytes, off: int, end: int,
                                f: Fields) -> Identity:
    app, off = read_application(b, off, end)
    f["application"] = app
    f["server_uri"], off = read_string(b, off, end)
    f["endpoint_url"], off = read_string(b, off, end)
    f["session_name"], off = read_string(b, off, end)
    return _identity(app)


def _svc_create_session_response(sess: "OPCUASession", b: bytes, off: int, end: int,
                                 f: Fields) -> Identity:
    f["session_id"], _, off = read_nodeid(b, off, end)
    off = skip_nodeid(b, off, end) + 8           # authentication token, revised timeout
    off = skip_bytes(b, off, end)[1]             # server nonce
    off = skip_bytes(b, off, end)[1]             # server certificate
    return _endpoints(b, off, end, f)[0]


def _svc_activate_session_request(sess: "OPCUASession", b: bytes, off: int, end: int,
                                  f: Fields) -> Identity:
    off = skip_bytes(b, off, end)[1]             # client signature: algorithm, signature
    off = skip_bytes(b, off, end)[1]
    n, off = array_len(b, off, end)              # software certificates: data, signature
    for _ in range(n):
        off = skip_bytes(b, skip_bytes(b, off, end)[1], end)[1]
    off = skip_strings(b, off, end)              # locale ids
    _, type_id, off = read_nodeid(b, off, end)   # user identity token (ExtensionObject)
    f["user_token_type"] = UA_IDENTITY_TOKENS.get(type_id, "unknown")
    need(end, off + 1)
    if type_id == 324 and b[off] == 1:
        # UserNameIdentityToken: policy id, user name (the password stays encrypted)
        f["user_name"] = read_string(b, skip_bytes(b, off + 5, end)[1], end)[0]
    return None


SERVICE_PARSERS: dict[int, Callable[["OPCUASession", bytes, int, int, Fields], Identity]] = {
    446: _svc_opn_request, 449: _svc_opn_response,
    428: _svc_get_endpoints_request, 431: _svc_get_endpoints_response,
    461: _svc_create_session_request, 464: _svc_create_session_response,
    467: _svc_activate_session_request,
    527: _svc_browse, 631: _svc_read, 673: _svc_write, 712: _svc_call,
}


def _plausible_service(b: bytes, off: int, end: int) -> bool:
    """Does a readable sequence header + known service NodeId sit at ``off``? Tells a signed
    body from an encrypted one when the channel's security mode was not seen."""
    p = off + 8
    if end - p < 3:
        return False
    enc = b[p]
    if enc == 1:
        return b[p + 1] == 0 and (b[p + 2] | b[p + 3] << 8 if end - p >= 4 else -1) in UA_SERVICES
    if enc == 2 and end - p >= 7:
        return b[p + 1] == b[p + 2] == 0 and _U32.unpack_from(b, p + 3)[0] in UA_SERVICES
    return False


class OPCUASession(Session):
    """Per-flow state: the channel's security policy and mode, the buffer sizes the peers
    negotiated (per sending side), and multi-chunk messages in progress (per direction)."""

    def __init__(self, limits: Limits) -> None:
        self.max_pending = max(1, limits.max_pending)
        self.policy: str | None = None
        self.mode: str | None = None
        self.readable: bool | None = None
        self.max_chunk: dict[bool, int] = {True: 0, False: 0}
        self.partial: dict[bool, dict[int, str]] = {True: {}, False: {}}
        self.pending: dict[int, str] = {}      # request id -> service of the request
        self.an: list[str] = []

    def feed(self, pdu: bytes, from_client: bool, now: float) -> list[Message]:
        n = len(pdu)
        if n < OPCUA_HEADER_LEN:
            f: Fields = {"message_type": _text(pdu[:3])} if n >= 3 else {}
            return [Message("opcua", f, from_client, (A_TRUNCATED,), "truncated")]
        raw_type, raw_chunk, size = _HDR.unpack_from(pdu)
        self.an = an = []
        f = {"message_type": _text(raw_type), "chunk_type": _text(raw_chunk),
             "message_size": size}
        chunks = OPCUA_CHUNK_TYPES.get(raw_type)
        if chunks is None:
            return [Message("opcua", f, from_client, (A_MESSAGE_TYPE,), "unknown")]
        if raw_chunk not in chunks:
            an.append(A_CHUNK_TYPE)
        end = n
        if size != n:
            if size > n:
                an.append(A_TRUNCATED)
            else:
                an.append(A_LENGTH)
                end = max(size, OPCUA_HEADER_LEN)
        if size < OPCUA_MIN_SIZE[raw_type] or (raw_type == b"ACK" and size != OPCUA_ACK_SIZE):
            an.append(A_LENGTH)
        limit = self.max_chunk[from_client]
        if limit and size > limit:
            an.append(A_LENGTH)
        identity: Identity = None
        try:
            if raw_type == b"MSG" or raw_type == b"CLO":
                identity = self._symmetric(pdu, end, f, raw_chunk, from_client)
            elif raw_type == b"OPN":
                identity = self._open(pdu, end, f, from_client)
            elif raw_type == b"HEL" or raw_type == b"ACK":
                self._hello(pdu, end, f, raw_type == b"HEL", from_client)
            elif raw_type == b"ERR":
                code = f["status_code"] = _U32.unpack_from(pdu, 8)[0]
                f["status"] = status_name(code)
                f["reason"] = read_string(pdu, 12, end)[0]
            else:
                f["server_uri"], off = read_string(pdu, 8, end)
                f["endpoint_url"] = read_string(pdu, off, end)[0]
        except (dpkt.NeedData, struct.error, IndexError):
            if A_TRUNCATED not in an and A_LENGTH not in an:
                an.append(A_TRUNCATED)
        except ValueError:
            an.append(A_VALUE)
        service = f.get("service")
        if raw_type in OPCUA_CONNECTION_KINDS:
            kind = OPCUA_CONNECTION_KINDS[raw_type]
            is_request: bool | None = raw_type == b"HEL"
        elif f.get("continuation") or raw_chunk == b"A":
            kind = "abort_chunk" if raw_chunk == b"A" else "message_chunk"
            is_request = from_client
        elif service and service != "unknown":
            kind, is_request = self._pair(f, service)
        else:
            kind = service or OPCUA_SECURE_KINDS[raw_type]
            is_request = from_client
        anomalies = () if not an else tuple(dict.fromkeys(an)) if len(an) > 1 else (an[0],)
        return [Message("opcua", f, is_request, anomalies, kind, identity)]

    def _pair(self, f: Fields, service: str) -> tuple[str, bool]:
        """Kind and direction of a service message: requests and their responses share the
        service's name ("read"); a response whose service result is Bad, or a ServiceFault,
        takes it with ``_exception`` (of the request it answers, by request id)."""
        pending = self.pending
        rid = f.get("request_id", -1)
        if service.endswith("_request"):
            base = service[:-8]
            if rid in pending:
                del pending[rid]
            elif len(pending) >= self.max_pending:
                del pending[next(iter(pending))]
            pending[rid] = base
            return base, True
        asked = pending.pop(rid, None)
        if service == "service_fault":
            return f"{asked or 'unknown'}_exception", False
        base = service.removesuffix("_response")
        if f.get("status_code", 0) & OPCUA_STATUS_BAD:
            return f"{base}_exception", False
        return base, False

    def _hello(self, b: bytes, end: int, f: Fields, hello: bool, from_client: bool) -> None:
        need(end, 28)
        version, rbuf, sbuf, max_msg, max_chunks = _HELLO.unpack_from(b, 8)
        f.update(protocol_version=version, receive_buffer_size=rbuf, send_buffer_size=sbuf,
                 max_message_size=max_msg, max_chunk_count=max_chunks)
        if rbuf < OPCUA_MIN_BUFFER or sbuf < OPCUA_MIN_BUFFER:
            self.an.append(A_VALUE)
        # The sender receives chunks up to its receive buffer and sends up to its send buffer;
        # the Acknowledge revises what the Hello offered.
        self.max_chunk[not from_client] = rbuf
        self.max_chunk[from_client] = sbuf
        if hello:
            n = skip_bytes(b, 28, end)[0]
            f["endpoint_url"] = read_string(b, 28, end)[0]
            if n > OPCUA_MAX_URL:
                self.an.append(A_LENGTH)

    def _open(self, b: bytes, end: int, f: Fields, from_client: bool) -> Identity:
        need(end, 12)
        f["secure_channel_id"] = _U32.unpack_from(b, 8)[0]
        uri, off = read_string(b, 12, end)
        f["security_policy_uri"] = uri
        f["security_policy"] = self.policy = policy_name(uri)
        cert, off = skip_bytes(b, off, end)
        f["sender_certificate_length"] = max(cert, 0)
        thumb, off = skip_bytes(b, off, end)
        f["receiver_thumbprint"] = thumb > 0
        # 6.7.2.3: with a policy other than None the asymmetric algorithms encrypt everything
        # from the sequence header on, whatever the security mode.
        if self.policy != OPCUA_POLICY_NONE:
            f["encrypted"] = True
            self.readable = None
            return None
        self.readable = True
        f["encrypted"] = False
        return self._sequence_and_body(b, off, end, f, b"F", from_client)

    def _symmetric(self, b: bytes, end: int, f: Fields, chunk: bytes,
                   from_client: bool) -> Identity:
        need(end, 16)
        f["secure_channel_id"], f["token_id"] = _II.unpack_from(b, 8)
        if self.policy is not None:
            f["security_policy"] = self.policy
        if self.mode is not None:
            f["security_mode"] = self.mode
        readable = self.readable
        if readable is None and _plausible_service(b, 16, end):
            readable = True
            if self.policy is not None:
                self.readable = True
                self.mode = f["security_mode"] = "sign"
        if not readable:
            f["encrypted"] = True
            return None
        f["encrypted"] = False
        return self._sequence_and_body(b, 16, end, f, chunk, from_client)

    def _sequence_and_body(self, b: bytes, off: int, end: int, f: Fields, chunk: bytes,
                           from_client: bool) -> Identity:
        need(end, off + 8)
        f["sequence_number"], rid = _II.unpack_from(b, off)
        f["request_id"] = rid
        off += 8
        partial = self.partial[from_client]
        if chunk == b"A":
            # 6.7.3: an abort chunk carries an error code and a reason instead of the rest.
            partial.pop(rid, None)
            need(end, off + 4)
            code = f["status_code"] = _U32.unpack_from(b, off)[0]
            f["status"] = status_name(code)
            f["reason"] = read_string(b, off + 4, end)[0]
            return None
        if rid in partial:
            f["continuation"] = True
            f["service"] = partial.pop(rid) if chunk == b"F" else partial[rid]
            return None
        try:
            return self._service(b, off, end, f, chunk, rid, partial)
        except dpkt.NeedData:
            if chunk != b"C":
                raise
            return None       # the first chunk of a long message: the rest comes later

    def _service(self, b: bytes, off: int, end: int, f: Fields, chunk: bytes, rid: int,
                 partial: dict[int, str]) -> Identity:
        text, sid, off = read_nodeid(b, off, end)
        name = UA_SERVICES.get(sid)
        if sid >= 0:
            f["service_type_id"] = sid
        else:
            f["service_node_id"] = text
        f["service"] = name or "unknown"
        if chunk == b"C":
            if len(partial) >= self.max_pending:
                del partial[next(iter(partial))]
            partial[rid] = f["service"]
        if name is None:
            self.an.append(A_UNKNOWN_SERVICE)
            return None
        if sid == UA_SERVICE_FAULT or name.endswith("_response"):
            handle, result, off = skip_response_header(b, off, end)
            f["request_handle"] = handle
            f["status_code"] = result
            f["status"] = status_name(result)
        else:
            f["request_handle"], off = skip_request_header(b, off, end)
        parser = SERVICE_PARSERS.get(sid)
        return parser(self, b, off, end, f) if parser is not None else None

    def close(self, now: float) -> list[Message]:
        self.partial = {True: {}, False: {}}
        self.pending.clear()
        return []


class OPCUADecoder(Decoder):
    """OPC UA binary over TCP (UA TCP + UA Secure Conversation)."""

    def probe(self, data: bytes) -> bool:
        # Resynchronisation after a gap probes every offset: demand a known message type, a
        # chunk type it may carry and a size in its range, and for HEL/ACK a sane version.
        if len(data) < OPCUA_HEADER_LEN:
            return False
        raw_type, raw_chunk, size = _HDR.unpack_from(data)
        chunks = OPCUA_CHUNK_TYPES.get(raw_type)
        if chunks is None or raw_chunk not in chunks or size < OPCUA_MIN_SIZE[raw_type]:
            return False
        if raw_type in (b"HEL", b"ACK"):
            if size > OPCUA_MIN_SIZE[b"HEL"] + OPCUA_MAX_URL or (
                    raw_type == b"ACK" and size != OPCUA_ACK_SIZE):
                return False
            return len(data) < 12 or _U32.unpack_from(data, 8)[0] < 0x100
        if raw_type in (b"ERR", b"RHE"):
            return size <= OPCUA_MIN_SIZE[raw_type] + 2 * OPCUA_MAX_URL
        return size <= OPCUA_MAX_CHUNK

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        off = 0
        n = len(data)
        unpack = _HDR.unpack_from
        while n - off >= OPCUA_HEADER_LEN:
            raw_type, _, size = unpack(data, off)
            if raw_type not in OPCUA_CHUNK_TYPES or not OPCUA_HEADER_LEN <= size <= OPCUA_MAX_CHUNK:
                return (out, off) if out else ([], -1)
            stop = off + size
            if stop > n:
                break
            out.append(bytes(data[off:stop]))
            off = stop
        if not out and 3 <= n - off < OPCUA_HEADER_LEN and bytes(data[:3]) not in OPCUA_CHUNK_TYPES:
            return [], -1
        return out, off

    def session(self, limits: Limits) -> OPCUASession:
        return OPCUASession(limits)


DECODER = OPCUADecoder(name="opcua", tcp_ports=frozenset({OPCUA_PORT}))
