"""OPC UA binary decoder: hand-laid chunks field by field, framing, channel security state,
anomalies, a fuzz run, and whole captures against tshark and the ICSNPP baselines."""
from __future__ import annotations

import itertools
import random
import struct
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from edge_agent.decode import Limits, Message
from edge_agent.decode.opcua import DECODER, OPCUASession, UAHeader, UAHello, UASymmetricHeader
from edge_agent.decode.opcua_types import UA_SERVICES, policy_name, vendor_of
from tests.conftest import BASELINES, fixture_pcaps
from tests.decode import fuzz
from tests.test_agreement import agent_records, agreement, needs_tshark, tshark_rows

PCAPS = fixture_pcaps("opcua")
needs_fixtures = pytest.mark.skipif(not PCAPS, reason="no OPC UA fixture captures in shared/")


def h(text: str) -> bytes:
    """Hex with spaces and ``|`` separators, so vectors can be laid out field by field."""
    return bytes.fromhex(text.replace("|", " "))


def s(text: str | None) -> bytes:
    """UA String: Int32 length (-1 null) and UTF-8 bytes."""
    if text is None:
        return b"\xff\xff\xff\xff"
    raw = text.encode()
    return struct.pack("<i", len(raw)) + raw


def chunk(mtype: bytes, body: bytes, ctype: bytes = b"F") -> bytes:
    return bytes(UAHeader(message_type=mtype, chunk_type=ctype, message_size=8 + len(body),
                          data=body))


def msg(body: bytes, scid: int = 4, seq: int = 20, rid: int = 20, ctype: bytes = b"F",
        mtype: bytes = b"MSG") -> bytes:
    return chunk(mtype, bytes(UASymmetricHeader(secure_channel_id=scid, token_id=scid,
                                                sequence_number=seq, request_id=rid,
                                                data=body)), ctype)


def one(sess: OPCUASession, pdu: bytes, from_client: bool = True) -> Message:
    msgs = DECODER.safe_feed(sess, pdu, from_client, 0.0)
    assert len(msgs) == 1
    return msgs[0]


def new() -> OPCUASession:
    return DECODER.session(Limits())


REQUEST_HEADER = h("00 00 |"                   # authentication token: two-byte NodeId i=0
                   "0000000000000000 |"        # timestamp
                   "15000000 |"                # request handle 21
                   "00000000 |"                # return diagnostics
                   "ffffffff |"                # audit entry id: null
                   "10270000 |"                # timeout hint 10000 ms
                   "00 00 00")                 # additional header: NodeId i=0, no body
RESPONSE_HEADER = h("0000000000000000 |"       # timestamp
                    "15000000 |"               # request handle 21
                    "00000000 |"               # service result Good
                    "00 |"                     # diagnostic info: empty mask
                    "00000000 |"               # string table: 0 strings
                    "00 00 00")                # additional header: none

HELLO = h("48454c | 46 | 38000000 |"          # "HEL" "F" size 56
          "00000000 |"                         # protocol version 0
          "ffff0000 | ffff0000 |"              # receive / send buffer 65535
          "00000000 | 00000000 |"              # max message size, max chunk count: no limit
          "18000000 6f70632e7463703a2f2f6c6f63616c686f73743a34383430")  # opc.tcp://localhost:4840
ACK = h("41434b | 46 | 1c000000 |"            # "ACK" "F" size 28
        "00000000 | ffff0000 | ffff0000 | 00000000 | 00000000")
OPN_NONE_REQUEST = h(
    "4f504e | 46 | 84000000 |"                 # "OPN" "F" size 132
    "00000000 |"                               # secure channel id 0: not assigned yet
    "2f000000" + b"http://opcfoundation.org/UA/SecurityPolicy#None".hex() + "|"
    "ffffffff | ffffffff |"                    # no sender certificate, no thumbprint
    "01000000 | 01000000 |"                    # sequence number 1, request id 1
    "01 00 be01 |"                             # four-byte NodeId i=446 OpenSecureChannelRequest
    + REQUEST_HEADER.hex() + "|"
    "00000000 |"                               # client protocol version
    "00000000 |"                               # request type issue
    "01000000 |"                               # security mode None
    "00000000 |"                               # client nonce: empty
    "c0270900")                                # requested lifetime 600000 ms
OPN_NONE_RESPONSE = h(
    "4f504e | 46 | 88000000 |"                 # "OPN" "F" size 136
    "04000000 |"                               # secure channel id 4
    "2f000000" + b"http://opcfoundation.org/UA/SecurityPolicy#None".hex() + "|"
    "ffffffff | ffffffff |"
    "01000000 | 01000000 |"                    # sequence number 1, request id 1
    "01 00 c101 |"                             # i=449 OpenSecureChannelResponse
    + RESPONSE_HEADER.hex() + "|"
    "00000000 |"                               # server protocol version
    "04000000 | 05000000 |"                    # token: channel id 4, token id 5
    "0000000000000000 |"                       # created at
    "c0270900 |"                               # revised lifetime 600000 ms
    "01000000 00")                             # server nonce: one byte
READ_REQUEST = msg(
    h("01 00 7702 |")                          # i=631 ReadRequest
    + REQUEST_HEADER
    + h("0000000000000000 |"                   # max age 0.0
        "00000000 |"                           # timestamps to return: source
        "02000000 |"                           # 2 nodes to read
        "03 0100 0a000000 7468652e616e73776572 |"  # string NodeId ns=1 "the.answer"
        "0d000000 | ffffffff | 0000 ffffffff |"    # attribute 13 (value), no range/encoding
        "01 00 d208 |"                         # four-byte NodeId i=2258 (CurrentTime)
        "0d000000 | ffffffff | 0000 ffffffff"))
READ_RESPONSE = msg(h("01 00 7a02") + RESPONSE_HEADER   # i=634 ReadResponse
                    + h("01000000 | 01 | 06 2a000000 | 00000000"))  # 1 DataValue: Int32 42


def _hello_ack(sess: OPCUASession) -> None:
    one(sess, HELLO, True)
    one(sess, ACK, False)


def _none_channel() -> OPCUASession:
    sess = new()
    _hello_ack(sess)
    one(sess, OPN_NONE_REQUEST, True)
    one(sess, OPN_NONE_RESPONSE, False)
    return sess


# --- round trips through the dpkt header classes ---------------------------------------------

def test_round_trip_hello() -> None:
    body = bytes(UAHello(receive_buffer_size=65535, send_buffer_size=65535)) + s(
        "opc.tcp://localhost:4840")
    assert chunk(b"HEL", body) == HELLO
    hdr = UAHeader(HELLO)
    assert (hdr.message_type, hdr.chunk_type, hdr.message_size) == (b"HEL", b"F", 56)
    m = one(new(), HELLO)
    assert m.fields == {"message_type": "HEL", "chunk_type": "F", "message_size": 56,
                        "protocol_version": 0, "receive_buffer_size": 65535,
                        "send_buffer_size": 65535, "max_message_size": 0, "max_chunk_count": 0,
                        "endpoint_url": "opc.tcp://localhost:4840"}
    assert m.is_request is True and m.kind == "hello" and m.anomalies == ()
    a = one(new(), ACK, False)
    assert a.kind == "hello" and a.is_request is False and a.anomalies == ()
    assert "endpoint_url" not in a.fields and a.fields["receive_buffer_size"] == 65535


def test_open_secure_channel_policy_none() -> None:
    sess = new()
    _hello_ack(sess)
    q = one(sess, OPN_NONE_REQUEST, True)
    assert q.anomalies == () and q.kind == "open_secure_channel" and q.is_request
    assert q.fields == {
        "message_type": "OPN", "chunk_type": "F", "message_size": 132, "secure_channel_id": 0,
        "security_policy_uri": "http://opcfoundation.org/UA/SecurityPolicy#None",
        "security_policy": "None", "sender_certificate_length": 0,
        "receiver_thumbprint": False, "encrypted": False, "sequence_number": 1,
        "request_id": 1, "service_type_id": 446, "service": "open_secure_channel_request",
        "request_handle": 21, "client_protocol_version": 0, "request_type": "issue",
        "security_mode": "none", "requested_lifetime": 600000}
    r = one(sess, OPN_NONE_RESPONSE, False)
    assert r.anomalies == () and r.is_request is False
    assert r.fields["secure_channel_id"] == 4 and r.fields["token_id"] == 5
    assert r.fields["revised_lifetime"] == 600000 and r.fields["status"] == "good"


def test_read_request_and_response() -> None:
    sess = _none_channel()
    q = one(sess, READ_REQUEST, True)
    assert q.anomalies == () and q.kind == "read" and q.is_request is True
    f = q.fields
    assert (f["secure_channel_id"], f["token_id"], f["sequence_number"], f["request_id"]) == (
        4, 4, 20, 20)
    assert f["service_type_id"] == 631 and f["request_handle"] == 21
    assert f["node_ids"] == ["ns=1;s=the.answer", "i=2258"] and f["node_count"] == 2
    assert f["security_policy"] == "None" and f["security_mode"] == "none"
    assert f["encrypted"] is False
    r = one(sess, READ_RESPONSE, False)
    assert r.kind == "read" and r.is_request is False and r.anomalies == ()
    assert (r.fields["status_code"], r.fields["status"]) == (0, "good")


def test_write_call_browse_node_ids() -> None:
    sess = _none_channel()
    write = msg(h("01 00 a102") + REQUEST_HEADER    # i=673 WriteRequest
                + h("02000000 |"                     # 2 write values
                    "01 02 e803 | 0d000000 | ffffffff |"  # ns=2;i=1000, value attribute
                    "01 | 0b 0000000000002440 |"          # DataValue: Variant Double 10.0
                    "03 0100 02000000 5350 | 0d000000 | ffffffff |"  # ns=1;s=SP
                    "03 | 01 01 | 00000000"))        # DataValue: Boolean true + status Good
    m = one(sess, write)
    assert m.anomalies == () and m.kind == "write"
    assert m.fields["node_ids"] == ["ns=2;i=1000", "ns=1;s=SP"]
    assert m.fields["values"] == [10.0, True]
    call = msg(h("01 00 c802") + REQUEST_HEADER     # i=712 CallRequest
               + h("01000000 |"                      # 1 method call
                   "00 55 | 01 01 4df4 |"            # object i=85, method ns=1;i=62541
                   "02000000 | 06 2a000000 | 0c 02000000 6f6b"))  # Int32 42, String "ok"
    m = one(sess, call)
    assert m.anomalies == () and m.kind == "call"
    assert m.fields["object_ids"] == ["i=85"] and m.fields["node_ids"] == ["ns=1;i=62541"]
    browse = msg(h("01 00 0f02") + REQUEST_HEADER   # i=527 BrowseRequest
                 + h("00 00 | 0000000000000000 | 00000000 |"  # view: null, no timestamp
                     "00000000 |"                              # max references: no limit
                     "01000000 |"                              # 1 node to browse
                     "00 55 | 02000000 | 00 21 | 01 | 00000000 | 3f000000"))  # i=85, both, i=33
    m = one(sess, browse)
    assert m.anomalies == () and m.fields["node_ids"] == ["i=85"]


def test_node_ids_are_bounded() -> None:
    sess = _none_channel()
    item = h("01 00 d208 | 0d000000 | ffffffff | 0000 ffffffff")
    read = msg(h("01 00 7702") + REQUEST_HEADER + h("0000000000000000 00000000")
               + struct.pack("<i", 40) + item * 40)
    m = one(sess, read)
    assert m.anomalies == () and m.fields["node_count"] == 40
    assert len(m.fields["node_ids"]) == 16


def application(uri: str, product: str, name: str, atype: int) -> bytes:
    return (s(uri) + s(product) + h("02") + s(name)      # LocalizedText: text only
            + struct.pack("<I", atype) + s(None) + s(None) + h("ffffffff"))


def endpoint(url: str, app: bytes, mode: int, policy: str) -> bytes:
    return (s(url) + app + h("ffffffff")                  # no server certificate
            + struct.pack("<I", mode) + s(policy)
            + h("01000000") + s("anon") + h("00000000") + s(None) + s(None) + s(None)
            + s("http://opcfoundation.org/UA-Profile/Transport/uatcp-uasc-uabinary") + h("01"))


def test_get_endpoints_response_reveals_the_server() -> None:
    sess = _none_channel()
    app = application("urn:plc1:ua", "urn:Softing:SoftingOPCUAGateway", "Gateway", 0)
    body = (h("01 00 af01") + RESPONSE_HEADER            # i=431 GetEndpointsResponse
            + h("02000000")
            + endpoint("opc.tcp://plc1:4840", app, 1,
                       "http://opcfoundation.org/UA/SecurityPolicy#None")
            + endpoint("opc.tcp://plc1:4840", app, 3,
                       "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"))
    m = one(sess, msg(body), False)
    assert m.anomalies == () and m.kind == "get_endpoints"
    assert m.fields["endpoints"] == [
        {"endpoint_url": "opc.tcp://plc1:4840", "security_mode": "none",
         "security_policy": "None"},
        {"endpoint_url": "opc.tcp://plc1:4840", "security_mode": "sign_and_encrypt",
         "security_policy": "Basic256Sha256"}]
    assert m.identity == {"name": "Gateway", "product": "urn:Softing:SoftingOPCUAGateway",
                          "vendor": "Softing", "description": "urn:plc1:ua",
                          "device_type": "opcua_server"}


def test_activate_session_user_name() -> None:
    sess = _none_channel()
    token = s("username") + s("operator") + s(None) + s(None)
    body = (h("01 00 d301") + REQUEST_HEADER              # i=467 ActivateSessionRequest
            + s(None) + s(None)                           # client signature
            + h("00000000") + h("00000000")               # no certificates, no locales
            + h("01 00 4401 | 01") + struct.pack("<i", len(token)) + token)  # i=324 user name
    m = one(sess, msg(body))
    assert m.fields["user_token_type"] == "user_name" and m.fields["user_name"] == "operator"


def test_error_message_is_data() -> None:
    err = h("455252 | 46 | 1a000000 |"                    # "ERR" "F" size 26
            "00008080 |"                                  # 0x80800000 BadTcpMessageTooLarge
            "0a000000 746f6f206c61726765 21")             # reason "too large!"
    m = one(new(), err, False)
    assert m.anomalies == () and m.kind == "error" and m.is_request is False
    assert m.fields["status_code"] == 0x80800000
    assert m.fields["status"] == "bad_tcp_message_too_large"
    assert m.fields["reason"] == "too large!"


def test_service_fault() -> None:
    sess = _none_channel()
    fault = msg(h("01 00 8d01 | 0000000000000000 | 15000000 |"  # i=397, handle 21
                  "00002680 | 00 | 00000000 | 00 00 00"))        # BadSessionClosed
    m = one(sess, fault, False)
    assert m.kind == "unknown_exception" and m.is_request is False and m.anomalies == ()
    one(sess, READ_REQUEST, True)                       # request id 20
    m = one(sess, fault, False)
    assert m.kind == "read_exception" and m.fields["service"] == "service_fault"
    assert m.fields["status"] == "bad_session_closed" and m.fields["status_code"] == 0x80260000


def test_reverse_hello() -> None:
    m = one(new(), chunk(b"RHE", s("urn:server") + s("opc.tcp://server:4840")), False)
    assert m.kind == "reverse_hello" and m.anomalies == ()
    assert m.fields["server_uri"] == "urn:server"
    assert m.fields["endpoint_url"] == "opc.tcp://server:4840"


# --- security: encrypted and signed channels -----------------------------------------------

def _opn_secure(policy: str) -> bytes:
    return chunk(b"OPN", h("00000000") + s("http://opcfoundation.org/UA/SecurityPolicy#" + policy)
                 + struct.pack("<i", 900) + bytes(900) + s("0123456789abcdef0123")
                 + bytes(range(200)))                  # encrypted sequence header and body


def test_encrypted_channel_hides_the_service() -> None:
    sess = new()
    m = one(sess, _opn_secure("Aes128_Sha256_RsaOaep"))
    assert m.anomalies == () and m.kind == "open_secure_channel"
    assert m.fields["security_policy"] == "Aes128_Sha256_RsaOaep"
    assert m.fields["sender_certificate_length"] == 900 and m.fields["receiver_thumbprint"]
    assert m.fields["encrypted"] is True and "service" not in m.fields
    rng = random.Random(7)
    enc = msg(bytes(rng.randrange(256) for _ in range(120)))
    m = one(sess, enc)
    assert m.fields["encrypted"] is True and m.kind == "encrypted_message"
    assert "service" not in m.fields and "sequence_number" not in m.fields
    assert m.anomalies == ()


def test_signed_channel_stays_readable() -> None:
    sess = new()
    one(sess, _opn_secure("Basic256Sha256"))
    m = one(sess, READ_REQUEST + bytes(32))             # body followed by a signature
    assert m.fields["encrypted"] is False and m.fields["service"] == "read_request"
    assert m.fields["security_mode"] == "sign"
    assert "opcua.invalid_length" in m.anomalies        # the signature is not in the size
    m = one(sess, READ_REQUEST)
    assert m.fields["security_mode"] == "sign" and m.anomalies == ()


def test_policy_short_names() -> None:
    base = "http://opcfoundation.org/UA/SecurityPolicy#"
    for name in ("None", "Basic128Rsa15", "Basic256", "Basic256Sha256", "Aes128_Sha256_RsaOaep",
                 "Aes256_Sha256_RsaPss"):
        assert policy_name(base + name) == name
    assert policy_name(None) is None
    assert vendor_of("http://www.open62541.org") == "open62541.org"
    assert vendor_of("urn:Siemens:S7-1500") == "Siemens" and vendor_of("opaque") is None


# --- chunks ------------------------------------------------------------------------------------

def test_multi_chunk_message() -> None:
    sess = _none_channel()
    first, rest = READ_REQUEST[24:80], READ_REQUEST[80:]
    c = one(sess, msg(first, rid=9, seq=30, ctype=b"C"))
    assert c.fields["service"] == "read_request" and c.anomalies == ()
    assert c.kind == "read" and c.fields["chunk_type"] == "C"
    f = one(sess, msg(rest, rid=9, seq=31))
    assert f.fields["continuation"] is True and f.kind == "message_chunk"
    assert f.fields["service"] == "read_request" and f.anomalies == ()
    assert sess.partial[True] == {}
    # the next message on the same request id starts afresh
    assert one(sess, msg(READ_REQUEST[24:], rid=9)).kind == "read"


def test_abort_chunk() -> None:
    sess = _none_channel()
    one(sess, msg(READ_REQUEST[24:60], rid=11, ctype=b"C"))
    a = one(sess, msg(h("00008080") + s("too big"), rid=11, ctype=b"A"))
    assert a.kind == "abort_chunk" and a.anomalies == ()
    assert a.fields["status"] == "bad_tcp_message_too_large" and a.fields["reason"] == "too big"
    assert sess.partial[True] == {}


def test_partial_chunks_are_bounded() -> None:
    sess = DECODER.session(Limits(max_pending=4))
    one(sess, OPN_NONE_REQUEST)
    for rid in range(100):
        one(sess, msg(READ_REQUEST[24:60], rid=rid, ctype=b"C"))
    assert len(sess.partial[True]) == 4


# --- framing -----------------------------------------------------------------------------------

def test_split_partial_frame() -> None:
    for cut in range(len(READ_REQUEST)):
        assert DECODER.split(READ_REQUEST[:cut]) == ([], 0), cut
    assert DECODER.split(READ_REQUEST) == ([READ_REQUEST], len(READ_REQUEST))


def test_split_several_messages() -> None:
    stream = HELLO + ACK + OPN_NONE_REQUEST + READ_REQUEST[:30]
    pdus, used = DECODER.split(stream)
    assert pdus == [HELLO, ACK, OPN_NONE_REQUEST] and used == len(stream) - 30
    sess = new()
    kinds = [one(sess, p).kind for p in pdus]
    assert kinds == ["hello", "hello", "open_secure_channel"]


def test_split_resync_on_garbage() -> None:
    assert DECODER.split(b"GET / HTTP/1.1\r\n\r\n") == ([], -1)
    assert DECODER.split(h("4d5347 46 04000000")) == ([], -1)       # size 4 < header
    assert DECODER.split(h("4d5347 46 ffffffff 00")) == ([], -1)    # 4 GiB
    assert DECODER.split(b"XYZ") == ([], -1)
    assert DECODER.split(HELLO + b"GET / HTTP/1.1") == ([HELLO], len(HELLO))


def test_probe() -> None:
    for pdu in (HELLO, ACK, OPN_NONE_REQUEST, READ_REQUEST, READ_RESPONSE):
        assert DECODER.probe(pdu[:256])
    assert not DECODER.probe(h("41434b 46 1d000000"))          # ACK is exactly 28 bytes
    assert not DECODER.probe(h("48454c 43 38000000"))          # HEL in an intermediate chunk
    assert not DECODER.probe(h("4d5347 58 20000000"))          # chunk type X
    assert not DECODER.probe(h("4d5347 46 10000000"))          # MSG below its minimum
    assert not DECODER.probe(b"\x16\x03\x01\x00\x85\x01\x00\x00\x81")
    assert not DECODER.probe(HELLO[:7])


def test_decoder_registration() -> None:
    assert DECODER.name == "opcua" and DECODER.tcp_ports == frozenset({4840})
    assert UA_SERVICES[631] == "read_request" and UA_SERVICES[826] == "publish_request"
    assert UA_SERVICES[554] == "translate_browse_paths_to_node_ids_request"


# --- malformed input ---------------------------------------------------------------------------

@pytest.mark.parametrize("pdu,anomaly", [
    # message type "XYZ"
    (h("58595a 46 08000000"), "opcua.invalid_message_type"),
    # HEL in an abort chunk
    (chunk(b"HEL", HELLO[8:], b"A"), "opcua.invalid_chunk_type"),
    # size says 100, 56 bytes arrived
    (HELLO[:4] + h("64000000") + HELLO[8:], "opcua.truncated"),
    # size says 40, 56 bytes arrived
    (HELLO[:4] + h("28000000") + HELLO[8:], "opcua.invalid_length"),
    # ACK with 4 extra bytes
    (chunk(b"ACK", ACK[8:] + bytes(4)), "opcua.invalid_length"),
    # HEL receive buffer 1024 < 8192
    (chunk(b"HEL", h("00000000 00040000 ffff0000 00000000 00000000") + s("x")),
     "opcua.invalid_value"),
    # HEL endpoint URL of 5000 bytes
    (chunk(b"HEL", HELLO[8:28] + s("o" * 5000)), "opcua.invalid_length"),
    # HEL endpoint URL length says 100, 3 bytes follow
    (chunk(b"HEL", HELLO[8:28] + h("64000000 616263")), "opcua.truncated"),
    # shorter than the 8-byte header
    (h("4d5347 46 10"), "opcua.truncated"),
    # OPN: policy URI length points past the end
    (chunk(b"OPN", h("00000000 ff000000") + bytes(20)), "opcua.truncated"),
])
def test_malformed(pdu: bytes, anomaly: str) -> None:
    m = new().feed(pdu, True, 0.0)[0]                 # not safe_feed: must not raise
    assert anomaly in m.anomalies, m
    assert m.proto == "opcua"


def test_unknown_service_on_a_clear_channel() -> None:
    sess = _none_channel()
    m = one(sess, msg(h("01 00 3930") + REQUEST_HEADER))  # i=12345
    assert m.anomalies == ("opcua.unknown_service",)
    assert m.fields["service_type_id"] == 12345 and m.fields["service"] == "unknown"
    assert m.kind == "unknown"
    m = one(sess, msg(h("03 0200 03000000 666f6f") + REQUEST_HEADER))  # ns=2;s=foo
    assert m.fields["service_node_id"] == "ns=2;s=foo" and m.anomalies == (
        "opcua.unknown_service",)
    m = one(sess, msg(h("07 00")))                    # NodeId encoding 7 does not exist
    assert m.anomalies == ("opcua.invalid_value",)


def test_chunk_larger_than_negotiated() -> None:
    sess = new()
    one(sess, HELLO, True)
    one(sess, chunk(b"ACK", h("00000000 00200000 00200000 00000000 00000000")), False)
    m = one(sess, msg(bytes(8200)), True)             # 8232 > receive buffer 8192
    assert "opcua.invalid_length" in m.anomalies


def test_truncated_service_body() -> None:
    sess = _none_channel()
    m = one(sess, msg(READ_REQUEST[24:70]))
    assert m.anomalies == ("opcua.truncated",) and m.kind == "read"


def test_every_truncation_decodes() -> None:
    for pdu in (HELLO, ACK, OPN_NONE_REQUEST, OPN_NONE_RESPONSE, READ_REQUEST, READ_RESPONSE):
        for cut in range(len(pdu)):
            m = _none_channel().feed(pdu[:cut], True, 0.0)[0]
            assert m.anomalies, (pdu.hex(), cut)


# --- fuzz --------------------------------------------------------------------------------------

def _length(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 28:
        pos = rng.randrange(8, len(buf) - 4)      # a length or count field gone wild
        buf[pos:pos + 4] = rng.choice((b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f",
                                       b"\x00\x01\x00\x00", b"\x05\x00\x00\x00"))


def _small_octet(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 30:
        buf[rng.randrange(24, len(buf))] = rng.choice((0, 1, 2, 3, 4, 5, 0x40, 0x80, 0xff))


def _chunk_type(rng: random.Random, buf: bytearray) -> None:
    buf[3:4] = rng.choice((b"F", b"C", b"A", b"X"))


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.insert(8), _length, _small_octet,
                       _chunk_type),
                      fix=fuzz.length_field(4, 4, order="little", chance=0.7))   # message size


def test_fuzz_no_exception_escapes() -> None:
    seeds = [HELLO, ACK, OPN_NONE_REQUEST, OPN_NONE_RESPONSE, READ_REQUEST, READ_RESPONSE,
             _opn_secure("Basic256Sha256")]
    # a fresh session every 5000 inputs: one that has seen no Hello, then an open None channel
    kinds = itertools.cycle((lambda: DECODER.session(Limits(max_pending=8)), _none_channel))
    most = max(8, Limits().max_pending)
    decoded = fuzz.run(DECODER, seeds, MUTATE, seed=0x4F5043, renew=5000,
                       session=lambda: next(kinds)(),
                       bounded=lambda s: len(s.partial[True]) <= most)
    assert decoded >= 100_000


# --- real captures -----------------------------------------------------------------------------

def _ours(path: Path) -> dict:
    out: dict = defaultdict(list)
    for r in agent_records(path, "opcua"):
        o = r["opcua"]
        out[(r["src_ip"], r["src_port"])].append(
            (o.get("message_type"), o.get("secure_channel_id"), o.get("service_type_id")))
    return out


def _theirs(path: Path) -> dict:
    out: dict = defaultdict(list)
    for row in tshark_rows(path, "opcua", ["opcua.transport.type", "opcua.transport.scid",
                                           "opcua.servicenodeid.numeric"]):
        src = (row[0] or row[1])[0]
        port = int((row[2] or row[3])[0])
        types, scids, services = row[4:7]
        for t in types:
            if t in ("HEL", "ACK", "ERR", "RHE"):
                out[(src, port)].append((t, None, None))
            else:
                scid = int(scids.pop(0)) if scids else None
                svc = int(services.pop(0)) if services else None
                out[(src, port)].append((t, scid, svc))
    return out


@needs_tshark
@needs_fixtures
@pytest.mark.parametrize("path", PCAPS, ids=[p.name for p in PCAPS])
def test_pcap_agrees_with_tshark(path: Path) -> None:
    matched, total, diffs = agreement(_ours(path), _theirs(path))
    print(f"{path.name}: {matched}/{total} = {matched / max(total, 1):.2%} agreement with tshark")
    assert total and matched / total >= 0.99, diffs[:5]


def _zeek(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()
            if line and not line.startswith("#")]


@needs_fixtures
@pytest.mark.parametrize("path", PCAPS, ids=[p.name for p in PCAPS])
def test_pcap_matches_icsnpp_log(path: Path) -> None:
    """ICSNPP logs a request and its response on one line: message type, request service id
    and request id, response service id; HEL carries the endpoint URL and buffer sizes."""
    base = BASELINES / "opcua" / path.stem
    recs = agent_records(path, "opcua")
    ours_req = [(r["src_port"], r["opcua"]["message_type"], r["opcua"].get("service_type_id"),
                 r["opcua"].get("request_id"), r["opcua"].get("endpoint_url")
                 if r["opcua"]["message_type"] == "HEL" else None)
                for r in recs if r["dest_port"] == 4840 and r["opcua"]["message_type"] != "ACK"]
    ours_resp = [(r["dest_port"], r["opcua"].get("service_type_id")) for r in recs
                 if r["src_port"] == 4840 and r["opcua"].get("service_type_id")]
    theirs_req, theirs_resp = [], []
    for row in _zeek(base / "opcua_binary.log"):
        port, mtype = int(row[3]), row[6]
        if mtype == "ACK":
            continue
        if mtype == "HEL":
            theirs_req.append((port, "HEL", None, None, row[16]))
            continue
        theirs_req.append((port, mtype, int(row[29]), int(row[26]), None))
        names = [i for i, v in enumerate(row) if v.endswith("Response")]
        if names:
            theirs_resp.append((port, int(row[names[0] - 1])))
    # ICSNPP writes a line when the response comes (Publish requests wait), and stops
    # following opcua_with-gap after its gap: every line of its must be one of ours.
    assert not Counter(theirs_req) - Counter(ours_req)
    assert not Counter(theirs_resp) - Counter(ours_resp)
    if "gap" not in path.name:
        assert Counter(theirs_req) == Counter(ours_req)
        assert Counter(theirs_resp) == Counter(ours_resp)
    print(f"{path.name}: {len(theirs_req)} ICSNPP request lines, {len(theirs_resp)} responses")


@needs_fixtures
def test_pcap_identity_matches_icsnpp_endpoints() -> None:
    path = next(p for p in PCAPS if p.stem == "open62541_client-server_mainloop")
    rows = _zeek(BASELINES / "opcua" / path.stem / "opcua_binary_create_session_endpoints.log")
    rows += _zeek(BASELINES / "opcua" / path.stem / "opcua_binary_get_endpoints_description.log")
    theirs = sorted({(r[12], r[13], r[16]) for r in rows})   # application uri, product, name
    idents = [r for r in agent_records(path, "opcua") if r["src_port"] == 4840
              and r["opcua"].get("application")]
    ours = sorted({(a["application_uri"], a["product_uri"], a["application_name"])
                   for a in (r["opcua"]["application"] for r in idents)})
    assert ours == theirs == [("urn:open62541.server.application", "http://open62541.org",
                               "open62541-based OPC UA Application")]
    assert len(idents) == 3                     # two GetEndpoints, one CreateSession response
