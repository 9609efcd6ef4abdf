"""MMS (ISO 9506 / IEC 61850-8-1) over ISO session, presentation and ACSE on COTP: the real
captures' PDUs laid out field by field, BER vectors built from the ASN.1, invoke-id pairing,
identity, anomalies, a fuzz run, and whole captures (the fixtures and one written from these
vectors) checked against tshark."""
from __future__ import annotations

import json
import random
import struct
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import dpkt
import pytest

from edge_agent.decode import Limits, Message, cotp
from edge_agent.decode.cotp import DECODER, TPKT, COTPData, COTPSession
from edge_agent.decode.mms import SPDU, MMSState, SPDUParameter, decode
from edge_agent.decode.mms_ber import MMS_MAX_ITEMS, BERError, tlv
from tests.conftest import fixture_pcaps
from tests.decode import fuzz
from tests.decode.test_cotp import ISO_PREFIXES
from tests.decode.test_s7comm import _pairs, h, tpkt
from tests.test_agreement import TSHARK, agent_records, agreement, needs_tshark


# --- BER and layer builders -------------------------------------------------------------------

def ber(tag: int, *parts: bytes) -> bytes:
    """One TLV: ``tag`` is the identifier octet(s) as an int (0x9F49 for [73] primitive)."""
    body = b"".join(parts)
    ident = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    n = len(body)
    if n < 0x80:
        return ident + bytes([n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return ident + bytes([0x80 | len(size)]) + size + body


def uint(value: int, tag: int = 0x02) -> bytes:
    """A BER INTEGER (default universal tag 2) holding a non-negative value."""
    return ber(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def vis(s: str, tag: int = 0x1A) -> bytes:
    return ber(tag, s.encode())


def dom(domain: str, item: str) -> bytes:
    """ObjectName domain-specific [1]: domainId, itemId."""
    return ber(0xA1, vis(domain), vis(item))


def var(name: bytes) -> bytes:
    """listOfVariable item: SEQUENCE { variableSpecification name [0] ObjectName }."""
    return ber(0x30, ber(0xA0, name))


def req(invoke: int, service: bytes) -> bytes:
    return ber(0xA0, uint(invoke), service)            # confirmed-RequestPDU [0]


def rsp(invoke: int, service: bytes) -> bytes:
    return ber(0xA1, uint(invoke), service)            # confirmed-ResponsePDU [1]


def data_tsdu(apdu: bytes, context_id: int = 3) -> bytes:
    """GIVE TOKENS + DATA TRANSFER SPDUs, then presentation fully-encoded-data [APPLICATION 1]
    with one PDV-list: context id, single-ASN1-type [0]."""
    return (bytes(SPDU(si=1, li=0)) + bytes(SPDU(si=1, li=0))
            + ber(0x61, ber(0x30, uint(context_id), ber(0xA0, apdu))))


def spdu(si: int, *params: tuple[int, bytes]) -> bytes:
    """A session SPDU with PI/PGI units (one-octet lengths)."""
    body = b"".join(bytes(SPDUParameter(code=c, length=len(v))) + v for c, v in params)
    return bytes(SPDU(si=si, li=len(body))) + body


def user_data(acse: bytes) -> bytes:
    """Presentation User-data carrying an ACSE APDU in context 1."""
    return ber(0x61, ber(0x30, uint(1), ber(0xA0, acse)))


def sess(**limits: int) -> COTPSession:
    s = DECODER.session(Limits(**limits))
    assert isinstance(s, COTPSession)
    return s


def established(**limits: int) -> COTPSession:
    """A connection that has carried an MMS PDU, so broken TSDUs are read as MMS."""
    s = sess(**limits)
    one(s, data_tsdu(h("8b 00")))                      # conclude-RequestPDU
    return s


def one(s: COTPSession, tsdu: bytes, from_client: bool = True) -> Message:
    msgs = DECODER.safe_feed(s, tpkt(tsdu), from_client, 0.0)
    assert len(msgs) == 1, msgs
    assert msgs[0].proto == "mms", msgs[0]
    return msgs[0]


# --- vectors from the fixture captures (iec61850_read.pcap / iec61850_write.pcap) --------------

INITIATE_CN = h(
    "0d b2"                                      # SPDU CONNECT, LI 178
    "| 05 06 13 01 00 16 01 02"                  # Connect Accept Item: options, version 2
    "| 14 02 0002 | 33 02 0001 | 34 02 0001"     # requirements: duplex; calling/called s-sel
    "| c1 9c"                                    # Session User Data, 156 octets
    "| 31 81 99"                                 # CP-type SET
    "|   a0 03 80 01 01"                         #   mode-selector: normal mode
    "|   a2 81 91"                               #   normal-mode-parameters
    "|     81 04 00000001 | 82 04 00000001"      #     calling/called presentation selector
    "|     a4 23"                                #     context definition list
    "|       30 0f 02 01 01 06 04 52010001 30 04 06 02 5101"        # 1: ACSE, BER
    "|       30 10 02 01 03 06 05 28ca220201 30 04 06 02 5101"      # 3: MMS, BER
    "|     88 02 06 00"                          #     presentation requirements
    "|     61 5a 30 58 02 01 01 a0 53"           #     user data: PDV, context 1, single ASN.1
    "|       60 51"                              #       AARQ
    "|         80 02 0780"                       #         protocol version 1
    "|         a1 07 06 05 28ca220203"           #         application context 1.0.9506.2.3
    "|         a2 06 06 04 2bce0f02"             #         called AP title 1.3.9999.2
    "|         a3 03 02 01 17"                   #         called AE qualifier 23
    "|         be 35 28 33 06 02 5101 02 01 03 a0 2a"   #   user information: EXTERNAL, MMS
    "|           a8 28"                          #           initiate-RequestPDU
    "|             80 02 7530"                   #             localDetailCalling 30000
    "|             81 02 03e8 | 82 02 03e8"      #             max outstanding 1000 / 1000
    "|             83 01 05"                     #             nesting level 5
    "|             a4 17 80 01 01"               #             detail: version 1
    "|               81 03 05 fb00"              #               parameter CBB
    "|               82 0d 03 ffffffffffffffffffffff00")  #     services supported calling
# The capture's ACCEPT: LI 137 with 136 octets after it, Session User Data of length 0, then the
# CPA-PPDU as if it were a parameter of its own (tshark: "Malformed Packet").
ACCEPT_BROKEN = h(
    "0e 89 05 06 13 01 00 06 01 02 14 02 0002 c1 00"
    "31 78 a0 03 80 01 00 a2 71 83 04 00000001"
    "a5 12 30 07 80 01 00 81 02 5201 30 07 80 01 00 81 02 5101 88 02 06 00"
    "61 51 30 4f 02 01 01 a0 4a 61 48 80 02 0780 a1 07 06 05 28ca220203 a2 03 02 01 00"
    "a3 05 a1 03 02 01 00 a4 06 06 04 2bce0f02 a5 03 02 01 17"
    "be 20 28 1e 02 01 03 a0 19 a9 17 80 01 00 81 01 00 82 01 00 83 01 00"
    "a4 09 80 01 00 81 01 00 82 01 00")
# The same ACCEPT as a conforming stack sends it (LI 136, user data 122 octets).
ACCEPT = h("0e 88 05 06 13 01 00 16 01 02 14 02 0002 c1 7a") + ACCEPT_BROKEN[16:]
GT_DT = h("01 00 | 01 00")                       # GIVE TOKENS, DATA TRANSFER
READ_MU = h("01 00 01 00 61 1d 30 1b 02 01 03 a0 16"
            "| a0 14 02 01 00"                   # confirmed-RequestPDU, invokeID 0
            "|   a4 0f 80 01 00"                 #   read, specificationWithResult FALSE
            "|     a1 0a a0 08 30 06 a0 04"      #     listOfVariable, one, name
            "|       80 02 6d75")                #       vmd-specific "mu"
READ_MU_RESP = h("01 00 01 00 61 10 30 0e 02 01 03 a0 09"
                 "| a1 07 02 01 00 a4 02 a1 00")  # response, invoke 0, read, no results
WRITE_MU = h("01 00 01 00 61 1d 30 1b 02 01 03 a0 16"
             "| a0 14 02 01 00 a5 0f"            # request, invoke 0, write
             "|   a0 08 30 06 a0 04 80 02 6d75"  #   listOfVariable: vmd-specific "mu"
             "|   a0 03 85 01 00")               #   listOfData: integer 0
WRITE_MU_RESP = h("01 00 01 00 61 0e 30 0c 02 01 03 a0 07"
                  "| a1 05 02 01 00 30 00")      # response, invoke 0, a SEQUENCE: no service
CONCLUDE = h("01 00 01 00 61 09 30 07 02 01 03 a0 02 | 8b 00")   # conclude-RequestPDU
BARE_RESP = h("01 00 01 00 61 0c 30 0a 02 01 03 a0 05 | a1 03 02 01 00")  # invoke 0 only


# --- built vectors ----------------------------------------------------------------------------

LLN0_MOD = dom("IED1LD0", "LLN0$ST$Mod$stVal")
MMXU_A = dom("IED1LD0", "MMXU1$MX$A$phsA$cVal$mag$f")
READ_2 = req(7, ber(0xA4, ber(0xA1, ber(0xA0, var(LLN0_MOD), var(MMXU_A)))))
UTC = struct.pack(">I", 1704067200) + h("800000 0a")         # 2024-01-01, .5 s, quality 0x0a
READ_2_RESP = rsp(7, ber(0xA4, ber(0xA1,                     # listOfAccessResult
    ber(0xA2,                                                # success: structure
        uint(1, 0x85),                                       #   integer 1 (on)
        h("84 03 03 0000"),                                  #   quality: 13 bits
        ber(0x91, UTC)),                                     #   utc-time
    h("80 01 0a"))))                                         # failure: object-non-existent
WRITE_ALL = req(8, ber(0xA5,
    ber(0xA0, var(dom("IED1LD0", "CSWI1$CO$Pos$Oper"))),
    ber(0xA0,                                                # listOfData
        h("83 01 ff"),                                       # boolean TRUE
        h("85 01 fe"),                                       # integer -2
        h("86 02 00ff"),                                     # unsigned 255
        h("87 05 08 42480000"),                              # float32 50.0
        ber(0x87, b"\x0b" + struct.pack(">d", 3.25)),        # float64 3.25
        vis("oper", 0x8A),                                   # visible-string
        h("84 02 06 80"),                                    # bit-string "10" (dbpos on)
        ber(0x91, UTC),                                      # utc-time
        h("89 02 beef"),                                     # octet-string
        h("8c 06 0036ee80 3912"),                            # binary-time 01:00, day 14610
        vis("überlast", 0x90),                               # MMSString (UTF-8)
        ber(0xA2, h("83 01 00"), ber(0xA1, h("85 01 01"), h("85 01 02"))),  # structure
    )))
WRITE_RESP = rsp(8, ber(0xA5, h("81 00 | 80 01 03")))         # success, object-access-denied
ERROR_RESP = ber(0xA2, h("80 01 07"),                          # confirmed-ErrorPDU, invoke 7
                 ber(0xA2, ber(0xA0, h("87 01 02")),           # errorClass access: non-existent
                     vis("no such object", 0x82)))             # additionalDescription
GET_NAME_LIST = req(3, ber(0xA1,
    ber(0xA0, h("80 01 00")),                                  # objectClass named variable
    ber(0xA1, vis("IED1LD0", 0x81))))                          # scope: domain-specific
GET_NAME_LIST_RESP = rsp(3, ber(0xA1,
    ber(0xA0, vis("LLN0"), vis("LPHD1"), vis("XCBR1")),        # listOfIdentifier
    h("81 01 00")))                                            # moreFollows FALSE
IDENTIFY = req(1, h("82 00"))
IDENTIFY_RESP = rsp(1, ber(0xA2, vis("ACME Grid", 0x80), vis("Relay 7SJ", 0x81),
                           vis("V4.7.1", 0x82)))
REPORT = ber(0xA3, ber(0xA0,                                   # unconfirmed, informationReport
    ber(0xA1, vis("RPT", 0x80)),                               # variableListName "RPT"
    ber(0xA0, vis("urcb01", 0x8A),                             # RptID
        h("84 03 06 7a00"),                                    # OptFlds
        ber(0xA2, h("83 01 01")))))                            # a value
REJECT = ber(0xA4, h("80 01 09 | 81 01 01"))                   # reject invoke 9: unrecognized
CANCEL = h("85 01 05")                                         # cancel-RequestPDU invoke 5
INITIATE_ERROR = ber(0xAA, ber(0xA0, h("88 01 03")))           # initiate: max outstanding

DATASET = dom("IED1LD0", "LLN0$DataSet1")
MORE_REQUESTS = [
    ber(0xAC, DATASET),                                        # getNamedVariableListAttributes
    ber(0xA6, ber(0xA0, LLN0_MOD)),                            # getVariableAccessAttributes
    h("80 01 00"),                                             # status
    ber(0xBF48, ber(0xA0, vis("a.cfg", 0x19)), h("81 01 00")),  # fileOpen
    h("9f49 01 05"),                                           # fileRead
    ber(0xBF4C, vis("old.log", 0x19)),                         # fileDelete
    vis("LD1", 0x9B),                                          # downloadSegment
    ber(0xBA, vis("LD1", 0x80), ber(0xA1), h("82 01 00")),     # initiateDownloadSequence
    vis("P1", 0x9F27),                                         # deleteProgramInvocation
    ber(0xAB, DATASET, ber(0xA0, var(LLN0_MOD))),              # defineNamedVariableList
    ber(0xAD, h("80 01 00"), ber(0xA1, DATASET)),              # deleteNamedVariableList
    ber(0xBF4B, ber(0xA0, vis("a", 0x19)), ber(0xA1, vis("b", 0x19))),  # fileRename
    ber(0xBF2E, ber(0xA1, vis("src", 0x19)), ber(0xA2, vis("dst", 0x19))),  # obtainFile
]


def pi(name: str, service_tag: int, *extra: bytes) -> bytes:
    """A program invocation request: [0] programInvocationName, then ``extra``."""
    return ber(service_tag, vis(name, 0x80), *extra)


PI_SERVICES = [
    ("create_program_invocation", 0xBF26, (ber(0xA1, vis("LD0")),)),    # [38] + domains
    ("start", 0xBF28, (vis("warm", 0x81),)),                            # [40] + argument
    ("stop", 0xBF29, ()), ("resume", 0xBF2A, ()), ("reset", 0xBF2B, ()),
    ("kill", 0xBF2C, ()),
]


# --- session headers and the round trip -------------------------------------------------------

def test_round_trip_session_headers() -> None:
    assert bytes(SPDU(si=1, li=0)) + bytes(SPDU(si=1, li=0)) == GT_DT
    hdr = SPDU(INITIATE_CN)
    assert (hdr.si, hdr.li) == (13, 0xB2) and len(hdr.data) == 0xB2
    param = SPDUParameter(hdr.data[8:])
    assert (param.code, param.length) == (0x14, 2)                # session requirement
    assert data_tsdu(h("8b 00")) == CONCLUDE


def test_initiate_request_from_capture() -> None:
    msg = one(sess(), INITIATE_CN)
    assert msg.is_request is True and msg.kind == "initiate" and msg.anomalies == ()
    assert msg.fields == {
        "spdu_type_code": 13, "spdu_type": "connect", "acse_apdu_code": 0, "acse_apdu": "aarq",
        "application_context": "1.0.9506.2.3", "called_ap_title": "1.3.9999.2",
        "called_ae_qualifier": 23, "pdu_type_code": 8, "pdu_type": "initiate_request",
        "local_detail": 30000, "max_serv_outstanding_calling": 1000,
        "max_serv_outstanding_called": 1000, "data_structure_nesting_level": 5,
        "version_number": 1, "parameter_cbb": "fb00",
        "services_supported": "ffffffffffffffffffffff00"}


def test_initiate_response_in_a_conforming_accept() -> None:
    msg = one(sess(), ACCEPT, False)
    assert msg.is_request is False and msg.kind == "initiate" and msg.anomalies == ()
    f = msg.fields
    assert (f["spdu_type"], f["acse_apdu"], f["acse_result"], f["acse_diagnostic"]) == \
        ("accept", "aare", "accepted", "null")
    assert (f["responding_ap_title"], f["responding_ae_qualifier"]) == ("1.3.9999.2", 23)
    assert (f["pdu_type"], f["local_detail"], f["version_number"]) == \
        ("initiate_response", 0, 0)


def test_the_captures_broken_accept_is_a_session_anomaly() -> None:
    """LI one past the TSDU and the CPA outside the user data: what tshark calls malformed."""
    s = sess()
    one(s, INITIATE_CN)
    msg = one(s, ACCEPT_BROKEN, False)
    assert msg.fields == {"spdu_type_code": 14, "spdu_type": "accept"}
    assert msg.anomalies == ("mms.invalid_session",) and msg.kind == "session_accept"


# --- confirmed services and pairing -----------------------------------------------------------

def test_read_of_a_vmd_specific_name_from_capture() -> None:
    s = sess()
    r = one(s, READ_MU)
    assert r.is_request is True and r.kind == "read" and r.anomalies == ()
    assert r.fields == {"pdu_type_code": 0, "pdu_type": "confirmed_request", "invoke_id": 0,
                        "service_code": 4, "service": "read", "item": "mu", "items": ["mu"],
                        "item_count": 1}
    resp = one(s, READ_MU_RESP, False)
    assert resp.is_request is False and resp.kind == "read" and resp.anomalies == ()
    assert resp.fields["access_results"] == [] and resp.fields["items"] == ["mu"]


def test_read_pairs_names_with_results() -> None:
    s = sess()
    r = one(s, data_tsdu(READ_2))
    assert r.fields["items"] == ["IED1LD0/LLN0$ST$Mod$stVal",
                                 "IED1LD0/MMXU1$MX$A$phsA$cVal$mag$f"]
    assert (r.fields["domain"], r.fields["item"]) == ("IED1LD0", "LLN0$ST$Mod$stVal")
    resp = one(s, data_tsdu(READ_2_RESP), False)
    f = resp.fields
    assert f["access_results"] == ["success", "object_non_existent"]
    assert f["values"] == [[1, "0000000000000", "2024-01-01T00:00:00.500000Z"], None]
    assert f["items"] == r.fields["items"] and f["domain"] == "IED1LD0"   # from the request
    assert resp.anomalies == () and not s.mms.pending


def test_write_values_of_every_type() -> None:
    s = sess()
    w = one(s, data_tsdu(WRITE_ALL))
    assert w.kind == "write" and w.anomalies == ()
    assert w.fields["item"] == "CSWI1$CO$Pos$Oper"
    assert w.fields["values"] == [
        True, -2, 255, 50.0, 3.25, "oper", "10", "2024-01-01T00:00:00.500000Z", "beef",
        "2024-01-01T01:00:00.000Z", "überlast", [False, [1, 2]]]
    resp = one(s, data_tsdu(WRITE_RESP), False)
    assert resp.fields["access_results"] == ["success", "object_access_denied"]
    assert resp.fields["item"] == "CSWI1$CO$Pos$Oper" and resp.kind == "write"


def test_write_response_without_a_service_from_capture() -> None:
    """The capture's server answers a write with an empty universal SEQUENCE."""
    s = sess()
    assert one(s, WRITE_MU).fields["values"] == [0]
    resp = one(s, WRITE_MU_RESP, False)
    assert resp.anomalies == ("mms.unknown_service",)
    assert "service_code" not in resp.fields and resp.kind == "write"    # from the request
    assert resp.fields["item"] == "mu"


def test_error_response_takes_the_request_service() -> None:
    s = sess()
    one(s, data_tsdu(READ_2))
    err = one(s, data_tsdu(ERROR_RESP), False)
    assert err.kind == "read_exception" and err.is_request is False and err.anomalies == ()
    assert err.fields == {
        "pdu_type_code": 2, "pdu_type": "confirmed_error", "invoke_id": 7,
        "error_class_code": 7, "error_class": "access", "error_code": 2,
        "error": "object_non_existent", "additional_description": "no such object",
        "domain": "IED1LD0", "item": "LLN0$ST$Mod$stVal",
        "items": ["IED1LD0/LLN0$ST$Mod$stVal", "IED1LD0/MMXU1$MX$A$phsA$cVal$mag$f"],
        "item_count": 2, "service_code": 4, "service": "read"}


def test_get_name_list() -> None:
    s = sess()
    r = one(s, data_tsdu(GET_NAME_LIST))
    assert r.kind == "get_name_list"
    assert (r.fields["object_class_code"], r.fields["object_class"]) == (0, "named_variable")
    assert (r.fields["object_scope"], r.fields["domain"]) == ("domain_specific", "IED1LD0")
    resp = one(s, data_tsdu(GET_NAME_LIST_RESP), False)
    assert resp.fields["identifiers"] == ["LLN0", "LPHD1", "XCBR1"]
    assert resp.fields["identifier_count"] == 3 and resp.fields["more_follows"] is False
    assert resp.fields["object_class"] == "named_variable"


def test_identify_response_reveals_the_server() -> None:
    s = sess()
    assert one(s, data_tsdu(IDENTIFY)).kind == "identify"
    resp = one(s, data_tsdu(IDENTIFY_RESP), False)
    assert (resp.fields["vendor_name"], resp.fields["model_name"], resp.fields["revision"]) \
        == ("ACME Grid", "Relay 7SJ", "V4.7.1")
    assert resp.identity == {"vendor": "ACME Grid", "model": "Relay 7SJ", "firmware": "V4.7.1"}


@pytest.mark.parametrize("kind, tag, extra", PI_SERVICES, ids=[p[0] for p in PI_SERVICES])
def test_program_invocation_services(kind: str, tag: int, extra: tuple[bytes, ...]) -> None:
    s = sess()
    r = one(s, data_tsdu(req(11, pi("P1", tag, *extra))))
    assert r.kind == kind and r.is_request is True and r.anomalies == ()
    assert r.fields["program_invocation"] == "P1" and r.fields["service_code"] == tag & 0x7F
    resp = one(s, data_tsdu(rsp(11, ber(tag - 0x2000))), False)    # the NULL response
    assert resp.kind == kind and resp.fields["program_invocation"] == "P1"


def test_program_invocation_names_and_state() -> None:
    s = sess()
    delete = one(s, data_tsdu(req(1, vis("P1", 0x9F27))))            # [39] Identifier
    assert (delete.kind, delete.fields["program_invocation"]) == ("delete_program_invocation", "P1")
    start = one(s, data_tsdu(req(2, pi("P2", 0xBF28, vis("cold", 0x81)))))
    assert start.fields["execution_argument"] == "cold"
    attrs = one(s, data_tsdu(req(3, vis("P2", 0x9F2D))))             # [45]
    assert attrs.kind == "get_program_invocation_attributes"
    resp = one(s, data_tsdu(rsp(3, ber(0xBF2D, h("80 01 03")))), False)
    assert resp.fields["program_invocation_state"] == "running"


def test_domain_download_and_upload() -> None:
    s = sess()
    init = one(s, data_tsdu(req(1, ber(0xBA, vis("LD1", 0x80), ber(0xA1), h("82 01 00")))))
    assert (init.kind, init.fields["domain"]) == ("initiate_download_sequence", "LD1")
    seg = one(s, data_tsdu(req(2, vis("LD1", 0x9B))))                  # [27] downloadSegment
    assert (seg.kind, seg.fields["domain"]) == ("download_segment", "LD1")
    seg_resp = one(s, data_tsdu(rsp(2, ber(0xBB, ber(0x80, bytes(300)), h("81 01 00")))), False)
    assert (seg_resp.fields["data_length"], seg_resp.fields["more_follows"]) == (300, False)
    term = one(s, data_tsdu(req(3, ber(0xBC, vis("LD1", 0x80)))))
    assert term.kind == "terminate_download_sequence"
    up = one(s, data_tsdu(req(4, vis("LD1", 0x9D))))                   # [29]
    assert up.kind == "initiate_upload_sequence"
    assert one(s, data_tsdu(rsp(4, ber(0xBD, h("80 01 2a"), ber(0xA1)))), False
               ).fields["ulsm_id"] == 42
    load = one(s, data_tsdu(req(5, ber(0xBF22, vis("LD1", 0x80), h("82 01 00"),
                                       ber(0xA4, vis("fw.bin", 0x19))))))
    assert (load.kind, load.fields["file_name"]) == ("load_domain_content", "fw.bin")
    assert one(s, data_tsdu(req(6, vis("LD1", 0x9F24)))).kind == "delete_domain"


def test_file_services() -> None:
    s = sess()
    name = ber(0xA0, vis("COMTRADE/fault1.cfg", 0x19))
    op = one(s, data_tsdu(req(1, ber(0xBF48, name, h("81 01 00")))))   # [72] fileOpen
    assert (op.kind, op.fields["file_name"], op.fields["initial_position"]) == \
        ("file_open", "COMTRADE/fault1.cfg", 0)
    op_resp = one(s, data_tsdu(rsp(1, ber(0xBF48, h("80 01 05"), ber(0xA1, h("80 02 0400"))))),
                  False)
    assert (op_resp.fields["frsm_id"], op_resp.fields["file_size"]) == (5, 1024)
    rd = one(s, data_tsdu(req(2, h("9f49 01 05"))))                     # [73] fileRead
    assert (rd.kind, rd.fields["frsm_id"]) == ("file_read", 5)
    rd_resp = one(s, data_tsdu(rsp(2, ber(0xBF49, ber(0x80, b"x" * 10)))), False)
    assert (rd_resp.fields["data_length"], rd_resp.fields["more_follows"]) == (10, True)
    assert one(s, data_tsdu(req(3, h("9f4a 01 05")))).kind == "file_close"
    ren = one(s, data_tsdu(req(4, ber(0xBF4B, ber(0xA0, vis("a", 0x19)),
                                      ber(0xA1, vis("b", 0x19))))))
    assert (ren.fields["file_name"], ren.fields["new_file_name"]) == ("a", "b")
    dele = one(s, data_tsdu(req(5, ber(0xBF4C, vis("old.log", 0x19)))))
    assert (dele.kind, dele.fields["file_name"]) == ("file_delete", "old.log")
    obtain = one(s, data_tsdu(req(6, ber(0xBF2E, ber(0xA1, vis("src", 0x19)),
                                         ber(0xA2, vis("dst", 0x19))))))
    assert (obtain.kind, obtain.fields["file_name"], obtain.fields["new_file_name"]) == \
        ("obtain_file", "src", "dst")
    one(s, data_tsdu(req(7, ber(0xBF4D))))                              # fileDirectory
    entry = ber(0x30, ber(0xA0, vis("a.cfg", 0x19)), ber(0xA1, h("80 01 10")))
    listing = one(s, data_tsdu(rsp(7, ber(0xBF4D, ber(0xA0, ber(0x30, entry, entry))))), False)
    assert listing.fields["file_names"] == ["a.cfg", "a.cfg"]
    assert listing.fields["more_follows"] is False


def test_named_variable_lists() -> None:
    s = sess()
    ds = dom("IED1LD0", "LLN0$DataSet1")
    get = one(s, data_tsdu(req(1, ber(0xAC, ds))))                      # [12] ObjectName
    assert get.fields["variable_list"] == "IED1LD0/LLN0$DataSet1"
    resp = one(s, data_tsdu(rsp(1, ber(0xAC, h("80 01 00"),
                                       ber(0xA1, var(LLN0_MOD), var(MMXU_A))))), False)
    assert resp.fields["items"] == ["IED1LD0/LLN0$ST$Mod$stVal",
                                    "IED1LD0/MMXU1$MX$A$phsA$cVal$mag$f"]
    define = one(s, data_tsdu(req(2, ber(0xAB, ds, ber(0xA0, var(LLN0_MOD))))))
    assert (define.kind, define.fields["variable_list"], define.fields["item_count"]) == \
        ("define_named_variable_list", "IED1LD0/LLN0$DataSet1", 1)
    delete = one(s, data_tsdu(req(3, ber(0xAD, h("80 01 00"), ber(0xA1, ds)))))
    assert delete.fields["items"] == ["IED1LD0/LLN0$DataSet1"]
    counts = one(s, data_tsdu(rsp(3, ber(0xAD, h("80 01 01 81 01 01")))), False)
    assert (counts.fields["number_matched"], counts.fields["number_deleted"]) == (1, 1)
    read = one(s, data_tsdu(req(4, ber(0xA4, ber(0xA1, ber(0xA1, ds))))))   # read the list
    assert read.fields["variable_list"] == "IED1LD0/LLN0$DataSet1"


def test_get_variable_access_attributes_and_status() -> None:
    s = sess()
    gva = one(s, data_tsdu(req(1, ber(0xA6, ber(0xA0, LLN0_MOD)))))
    assert (gva.kind, gva.fields["item"]) == ("get_variable_access_attributes",
                                              "LLN0$ST$Mod$stVal")
    one(s, data_tsdu(req(2, h("80 01 00"))))                            # status
    st = one(s, data_tsdu(rsp(2, ber(0xA0, h("80 01 00 81 01 02")))), False)
    assert (st.fields["vmd_logical_status"], st.fields["vmd_physical_status"]) == \
        ("state_changes_allowed", "inoperable")


def test_information_report() -> None:
    msg = one(sess(), data_tsdu(REPORT), False)
    assert msg.kind == "information_report" and msg.is_request is None and msg.anomalies == ()
    assert msg.fields == {"pdu_type_code": 3, "pdu_type": "unconfirmed", "service_code": 0,
                          "service": "information_report", "item": "RPT",
                          "variable_list": "RPT", "values": ["urcb01", "0111101000", [True]],
                          "report_id": "urcb01"}


def test_reject_cancel_conclude_and_initiate_error() -> None:
    s = sess()
    one(s, data_tsdu(req(9, ber(0xBF40))))                              # [64] any request
    rej = one(s, data_tsdu(REJECT), False)
    assert rej.kind == "reject" and rej.is_request is None and rej.anomalies == ()
    assert (rej.fields["reject_pdu"], rej.fields["reject_reason"], rej.fields["service"]) == \
        ("confirmed_request", "unrecognized_service", "get_alarm_enrollment_summary")
    assert not s.mms.pending
    cancel = one(s, data_tsdu(CANCEL))
    assert (cancel.kind, cancel.fields["invoke_id"], cancel.is_request) == ("cancel", 5, True)
    assert one(s, data_tsdu(CONCLUDE[-2:])).kind == "conclude"
    done = one(s, data_tsdu(h("8c 00")), False)
    assert (done.kind, done.fields["pdu_type"], done.is_request) == \
        ("conclude", "conclude_response", False)
    err = one(s, data_tsdu(INITIATE_ERROR), False)
    assert err.kind == "initiate_exception"
    assert (err.fields["error_class"], err.fields["error"]) == \
        ("initiate", "max_services_outstanding_calling_insufficient")


def test_release_abort_and_refuse() -> None:
    s = sess()
    fin = one(s, spdu(9, (0xC1, user_data(ber(0x62, h("80 01 00"))))))       # FN + RLRQ
    assert (fin.kind, fin.is_request, fin.fields["release_reason"]) == ("release", True, "normal")
    assert fin.fields["spdu_type"] == "finish"
    dis = one(s, spdu(10, (0xC1, user_data(ber(0x63, h("80 01 00"))))), False)  # DN + RLRE
    assert (dis.kind, dis.is_request, dis.fields["acse_apdu"]) == ("release", False, "rlre")
    aru = ber(0xA0, user_data(ber(0x64, h("80 01 01"))))                        # ARU-PPDU
    ab = one(s, spdu(25, (0x11, h("09")), (0xC1, aru)))
    assert (ab.kind, ab.fields["abort_source"]) == ("abort", "acse_service_provider")
    rf = one(s, spdu(12, (50, h("81"))), False)
    assert (rf.kind, rf.fields["refuse_reason"]) == ("session_refuse", "session_selector_unknown")
    assert one(s, h("01 00")).kind == "session_give_tokens"


def test_aarq_password_is_never_recorded() -> None:
    aarq = ber(0x60, h("a1 07 06 05 28ca220203"),
               h("8a 02 0780"),                                   # sender requirements
               h("8b 03 520301"),                                 # mechanism 2.2.3.1
               ber(0xAC, vis("s3cret", 0x80)),                    # calling auth: charstring
               ber(0xBE, ber(0x28, h("02 01 03"), ber(0xA0, h("a8 00")))))
    cp = ber(0x31, h("a0 03 80 01 01"), ber(0xA2, user_data(aarq)))
    msg = one(sess(), spdu(13, (0xC1, cp)))
    assert (msg.fields["authentication_mechanism"], msg.fields["authentication"]) == \
        ("password", "charstring")
    assert "s3cret" not in json.dumps(msg.fields)


def test_rejected_association_is_an_exception() -> None:
    aare = ber(0x61, h("a1 07 06 05 28ca220203 | a2 03 02 01 01 | a3 05 a1 03 02 01 0d"))
    cpa = ber(0x31, h("a0 03 80 01 01"), ber(0xA2, user_data(aare)))
    msg = one(sess(), spdu(14, (0xC1, cpa)), False)
    assert msg.kind == "associate_exception"
    assert (msg.fields["acse_result"], msg.fields["acse_diagnostic"]) == \
        ("rejected_permanent", "authentication_failure")


# --- framing through COTP ---------------------------------------------------------------------

def test_split_partial_frame() -> None:
    frame = tpkt(READ_MU)
    assert DECODER.split(frame[:3]) == ([], 0)
    assert DECODER.split(frame[:-1]) == ([], 0)
    assert DECODER.split(frame + tpkt(READ_MU_RESP)[:5]) == ([frame], len(frame))


def test_several_pdus_in_one_buffer() -> None:
    buf = tpkt(INITIATE_CN) + tpkt(READ_MU) + tpkt(CONCLUDE)
    pdus, used = DECODER.split(buf)
    assert used == len(buf) and len(pdus) == 3
    s = sess()
    kinds = [m.kind for p in pdus for m in DECODER.safe_feed(s, p, True, 0.0)]
    assert kinds == ["initiate", "read", "conclude"]


def test_tsdu_reassembled_from_several_dt() -> None:
    s = sess()
    tsdu = data_tsdu(WRITE_ALL)
    first = bytes(TPKT(length=7 + 20, data=bytes(COTPData(nr_eot=0x00, data=tsdu[:20]))))
    assert DECODER.safe_feed(s, first, True, 0.0) == []
    msg = one(s, tsdu[20:])
    assert msg.kind == "write" and len(msg.fields["values"]) == 12


def test_hook_state_is_made_once_per_connection() -> None:
    assert cotp.mms_hook() is decode and decode.state is MMSState  # type: ignore[attr-defined]
    s = sess(max_pending=5)
    one(s, READ_MU)
    state = s.mms
    assert isinstance(state, MMSState) and state.max_pending == 5
    one(s, READ_MU_RESP, False)
    assert s.mms is state and not state.pending


def test_stateless_decode_pairs_nothing() -> None:
    msg = decode(READ_MU_RESP, False)
    assert msg is not None and msg.anomalies == () and msg.kind == "read"


def test_not_a_session_spdu_stays_cotp() -> None:
    assert decode(h("03 00 01 02"), True) is None                       # no SPDU identifier
    msg = DECODER.safe_feed(sess(), tpkt(h("ff 00 01")), True, 0.0)[0]
    assert msg.proto == "cotp" and msg.fields["spdu"] == "unknown"


def test_a_fresh_connection_declines_what_reaches_no_pdu() -> None:
    """S7comm with a bad ROSCTR starts with 0x32, minor-sync-ack: not MMS until MMS shows."""
    s = sess()
    s7ish = h("32 09 0000 0000 0000 0000")
    assert DECODER.safe_feed(s, tpkt(s7ish), True, 0.0)[0].proto == "cotp"
    assert DECODER.safe_feed(s, tpkt(h("01 00 01 00 30 00")), True, 0.0)[0].proto == "cotp"
    one(s, READ_MU)
    broken = one(s, h("01 00 01 00 30 00"))
    assert broken.anomalies == ("mms.invalid_presentation",)
    assert one(s, s7ish).kind == "session_minor_sync_ack"


def test_indefinite_lengths_are_followed() -> None:
    tsdu = GT_DT + h("61 80 30 80 02 01 03 a0 80 | a0 80 02 01 01 a4 80 a1 80 a0 80"
                     "30 80 a0 80 80 02 6d75 0000 0000 0000 0000 0000 0000 | 0000 0000 0000")
    msg = one(sess(), tsdu)
    assert msg.anomalies == () and msg.fields["items"] == ["mu"]


def test_pending_requests_are_bounded() -> None:
    s = sess(max_pending=2)
    for invoke in range(3):
        msg = one(s, data_tsdu(req(invoke, h("82 00"))))
    assert msg.anomalies == ("mms.too_many_pending",) and len(s.mms.pending) == 2
    late = one(s, data_tsdu(rsp(0, h("82 00"))), False)        # its request was dropped
    assert late.anomalies == ("mms.unsolicited_response",)
    assert one(s, data_tsdu(rsp(2, h("82 00"))), False).anomalies == ()


def test_items_and_values_are_bounded() -> None:
    names = b"".join(var(dom("LD", f"V{i}")) for i in range(100))
    msg = one(sess(), data_tsdu(req(1, ber(0xA4, ber(0xA1, ber(0xA0, names))))))
    assert len(msg.fields["items"]) == MMS_MAX_ITEMS and msg.fields["item_count"] == 100
    deep = h("85 01 01")
    for _ in range(20):
        deep = ber(0xA2, deep)
    values = one(sess(), data_tsdu(req(1, ber(0xA5, ber(0xA0, var(LLN0_MOD)),
                                              ber(0xA0, deep, *[h("83 01 00")] * 100)))))
    flat = json.dumps(values.fields["values"])
    assert "..." in flat and len(flat) < 2000


# --- malformed input --------------------------------------------------------------------------

MALFORMED = [
    ("spdu_length_past_end", h("0d 20 05 06 13 01 00"), "mms.invalid_session"),
    ("parameter_past_spdu", h("0d 04 c1 09 31 00"), "mms.invalid_session"),
    ("dt_length_past_end", h("01 00 01 09 61 00"), "mms.invalid_session"),
    ("no_presentation", h("01 00 01 00"), "mms.invalid_presentation"),
    ("not_fully_encoded", h("01 00 01 00 30 00"), "mms.invalid_presentation"),
    ("unknown_pdu", data_tsdu(h("ae 00")), "mms.unknown_pdu"),
    ("universal_pdu", data_tsdu(h("30 00")), "mms.unknown_pdu"),
    ("unknown_service", data_tsdu(req(1, h("bf 63 00"))), "mms.unknown_service"),
    ("unknown_unconfirmed", data_tsdu(h("a3 02 85 00")), "mms.unknown_service"),
    ("no_service", data_tsdu(h("a0 03 02 01 01")), "mms.truncated"),
    ("length_past_end", data_tsdu(h("a0 10 02 01 01")), "mms.truncated"),
    ("cut_short", data_tsdu(READ_2)[:-3], "mms.truncated"),
    ("five_length_octets", data_tsdu(h("a0 85 0000000003 020101")), "mms.invalid_ber"),
    ("invoke_not_integer", data_tsdu(h("a0 03 04 01 01")), "mms.invalid_ber"),
    ("primitive_indefinite", data_tsdu(h("85 80 00 00")), "mms.invalid_ber"),
    ("bad_object_name", data_tsdu(req(1, ber(0xA4, ber(0xA1, ber(0xA0, var(h("85 00"))))))),
     "mms.invalid_ber"),
    ("empty_boolean", data_tsdu(req(1, ber(0xA5, ber(0xA0, var(LLN0_MOD)), h("a0 02 83 00")))),
     "mms.invalid_ber"),
    ("unsolicited", data_tsdu(rsp(99, h("82 00"))), "mms.unsolicited_response"),
    ("unsolicited_error", data_tsdu(ERROR_RESP), "mms.unsolicited_response"),
]


@pytest.mark.parametrize("name, tsdu, anomaly", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(name: str, tsdu: bytes, anomaly: str) -> None:
    msg = one(established(), tsdu)
    assert anomaly in msg.anomalies, msg
    assert not any(a.endswith(".malformed") for a in msg.anomalies)


def test_ber_errors_name_their_anomaly() -> None:
    with pytest.raises(BERError) as err:
        tlv(h("30 05 00"), 0, 3)
    assert err.value.anomaly == "truncated"
    assert tlv(h("bf 49 01 05"), 0, 4) == (0xA0, 73, 3, 4, 4)


VECTORS = [INITIATE_CN, ACCEPT, ACCEPT_BROKEN, READ_MU, READ_MU_RESP, WRITE_MU, WRITE_MU_RESP,
           CONCLUDE, BARE_RESP] + [data_tsdu(p) for p in (
               READ_2, READ_2_RESP, WRITE_ALL, WRITE_RESP, ERROR_RESP, GET_NAME_LIST,
               GET_NAME_LIST_RESP, IDENTIFY_RESP, REPORT, REJECT, CANCEL, INITIATE_ERROR)] + [
           data_tsdu(req(1, r)) for r in MORE_REQUESTS] + [
           spdu(9, (0xC1, user_data(ber(0x62, h("80 01 00"))))),            # FN + RLRQ
           spdu(25, (0x11, h("09")), (0xC1, ber(0xA0, user_data(ber(0x64, h("80 01 01")))))),
           spdu(12, (50, h("02")) ), spdu(13, (0xC1, ber(0x31, h("a0 03 80 01 01"), ber(
               0xA2, user_data(ber(0x60, h("a1 07 06 05 28ca220203 8b 03 520301"),
                                   ber(0xAC, vis("pw", 0x80)))))))),
           GT_DT + h("61 80 30 80 02 01 03 a0 80 a0 80 02 01 01 82 00 0000 0000 0000 0000")]


def test_every_truncation_decodes() -> None:
    for tsdu in VECTORS:
        for cut in range(1, len(tsdu)):
            if tsdu[:cut] == GT_DT[:2]:
                continue                    # a whole GIVE TOKENS SPDU on its own
            state = MMSState(Limits())
            state.established = True
            msg = decode(tsdu[:cut], True, state)
            assert msg is not None
            assert msg.anomalies, (tsdu.hex(), cut, msg)


# --- fuzz -------------------------------------------------------------------------------------

def _ber_length(rng: random.Random, buf: bytearray) -> None:
    if buf:                                        # a length octet: short, long, indefinite
        buf[rng.randrange(len(buf))] = rng.choice((0x00, 0x7F, 0x80, 0x81, 0x82, 0x84,
                                                   0x85, 0xFF))


def _ber_tag(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 4:                               # a tag: context, high number, universal
        buf[rng.randrange(4, len(buf))] = rng.choice((0xA0, 0xA1, 0xA2, 0xBF, 0x80, 0x30,
                                                      0x1F, 0x61, 0x00))


def _rotate(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 8:                               # splice two halves
        cut = rng.randrange(len(buf))
        buf[:] = buf[cut:] + buf[:cut]


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.insert(8), _ber_length, _ber_tag,
                       _rotate))


def _whole_frame(rng: random.Random, i: int, frame: bytes) -> list[bytes]:
    pdus = fuzz.framed(DECODER, frame)
    assert b"".join(pdus) == frame
    return pdus


def test_fuzz_no_exception_escapes() -> None:
    decoded = fuzz.run(DECODER, VECTORS, lambda rng, seed: tpkt(MUTATE(rng, seed)), seed=0x9506,
                       session=lambda: sess(max_pending=8, max_pdu=4096), renew=10_000,
                       units=_whole_frame, prefixes=ISO_PREFIXES, check=fuzz.writable,
                       bounded=lambda s: s.mms is None or len(s.mms.pending) <= 8)
    assert decoded >= 90_000


# --- real captures against tshark -------------------------------------------------------------

MMS_PCAPS = fixture_pcaps("mms")
# tshark's MMSpdu element fields, in MMSpdu tag order
TSHARK_PDUS = {f"mms.{name}": code for code, name in enumerate((
    "confirmed_RequestPDU_element", "confirmed_ResponsePDU_element", "confirmed_ErrorPDU_element",
    "unconfirmed_PDU_element", "rejectPDU_element", "cancel_RequestPDU", "cancel_ResponsePDU",
    "cancel_ErrorPDU_element", "initiate_RequestPDU_element", "initiate_ResponsePDU_element",
    "initiate_ErrorPDU_element", "conclude_RequestPDU_element", "conclude_ResponsePDU_element",
    "conclude_ErrorPDU_element"))}
TSHARK_SERVICES = ("mms.confirmedServiceRequest", "mms.confirmedServiceResponse",
                   "mms.unconfirmedService")


def _first(node: Any, keys: tuple[str, ...]) -> Any:
    """First value of any of ``keys`` anywhere below ``node`` (depth first)."""
    if isinstance(node, list):
        for v in node:
            found = _first(v, keys)
            if found is not None:
                return found
    elif isinstance(node, dict):
        for k, v in node.items():
            if k in keys:
                return v[0] if isinstance(v, list) else v
            found = _first(v, keys)
            if found is not None:
                return found
    return None


def _tshark_mms(path: Path) -> dict[tuple, list[tuple]]:
    """(pdu type, invoke id, service, first name of a request) per MMS PDU, per direction."""
    res = subprocess.run([str(TSHARK), "-r", str(path), "-Y", "mms", "-T", "json", "-J",
                          "ip tcp mms", "-o", "tcp.desegment_tcp_streams:TRUE"],
                         capture_output=True, text=True, check=True)
    out: dict[tuple, list[tuple]] = defaultdict(list)
    for pkt in json.loads(res.stdout, object_pairs_hook=_pairs):
        layers = pkt["_source"]["layers"]
        key = (_first(layers["ip"], ("ip.src",)), int(_first(layers["tcp"], ("tcp.srcport",))))
        for layer in (layers["mms"] if isinstance(layers["mms"], list) else [layers["mms"]]):
            for elem, body in layer.items():
                pdu = TSHARK_PDUS.get(elem)
                if pdu is None:
                    continue
                invoke = _first(body, ("mms.invokeID", "mms.originalInvokeID"))
                if pdu in (5, 6) and body:
                    invoke = body
                service = None
                if isinstance(body, dict) and pdu in (0, 1, 3):
                    service = next((body[k] for k in TSHARK_SERVICES if k in body), None)
                name = None
                if pdu == 0 and service in ("4", "5"):
                    dom_id = _first(body, ("mms.domainId",))
                    name = (dom_id, _first(body, ("mms.itemId",))) if dom_id is not None \
                        else (None, _first(body, ("mms.vmd_specific",)))
                out[key].append((pdu, None if invoke is None else int(invoke),
                                 None if service is None else int(service), name))
    return out


def _ours(path: Path) -> dict[tuple, list[tuple]]:
    out: dict[tuple, list[tuple]] = defaultdict(list)
    for r in agent_records(path, "mms"):
        f = r["mms"]
        if "pdu_type_code" not in f:
            continue                 # session-only SPDUs carry no MMS PDU
        pdu = f["pdu_type_code"]
        out[(r["src_ip"], r["src_port"])].append((
            pdu, f.get("invoke_id"), f.get("service_code") if pdu in (0, 1, 3) else None,
            (f.get("domain"), f.get("item")) if f.get("service_code") in (4, 5) and pdu == 0
            else None))
    return out


@needs_tshark
@pytest.mark.parametrize("path", MMS_PCAPS, ids=[p.name for p in MMS_PCAPS])
def test_pcap_agrees_with_tshark(path: Path) -> None:
    matched, total, diffs = agreement(_ours(path), _tshark_mms(path))
    print(f"{path.name}: mms {matched}/{total} PDUs agree with tshark "
          f"({100.0 * matched / max(total, 1):.2f}%)")
    assert total > 0 and matched / total >= 0.99, diffs


def _capture(path: Path, frames: list[tuple[bool, bytes]]) -> None:
    """A TCP connection client:50000 -> server:102, one TPKT per segment."""
    client, server = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    seq = {True: 1000, False: 5000}
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh)

        def segment(from_client: bool, flags: int, payload: bytes, ts: float) -> None:
            src, dst = (client, server) if from_client else (server, client)
            sport, dport = (50000, 102) if from_client else (102, 50000)
            tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq[from_client],
                               ack=seq[not from_client], flags=flags, data=payload)
            ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, data=tcp)
            eth = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
            writer.writepkt(bytes(eth), ts)
            seq[from_client] += len(payload) + (1 if flags & dpkt.tcp.TH_SYN else 0)

        segment(True, dpkt.tcp.TH_SYN, b"", 1.0)
        segment(False, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, b"", 1.001)
        segment(True, dpkt.tcp.TH_ACK, b"", 1.002)
        for i, (from_client, frame) in enumerate(frames):
            segment(from_client, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, frame, 2.0 + i / 100)


SYNTHETIC = [
    (True, h("03 00 0013 0e e0 0000 0001 00 c1 02 0001 c2 02 0001")),         # COTP CR
    (False, h("03 00 0013 0e d0 0001 0002 00 c1 02 0001 c2 02 0001")),        # COTP CC
    *[(fc, tpkt(t)) for fc, t in [
        (True, INITIATE_CN), (False, ACCEPT),
        (True, data_tsdu(IDENTIFY)), (False, data_tsdu(IDENTIFY_RESP)),
        (True, data_tsdu(GET_NAME_LIST)), (False, data_tsdu(GET_NAME_LIST_RESP)),
        (True, data_tsdu(READ_2)), (False, data_tsdu(READ_2_RESP)),
        (True, data_tsdu(WRITE_ALL)), (False, data_tsdu(WRITE_RESP)),
        (True, data_tsdu(READ_2)), (False, data_tsdu(ERROR_RESP)),
        (False, data_tsdu(REPORT)),
        *[(True, data_tsdu(req(20 + i, pi("P1", tag, *extra))))
          for i, (_, tag, extra) in enumerate(PI_SERVICES)],
        (True, data_tsdu(req(9, ber(0xBF40)))), (False, data_tsdu(REJECT)),
        *[(True, data_tsdu(req(30 + i, service))) for i, service in enumerate(MORE_REQUESTS)],
        (False, data_tsdu(rsp(30, ber(0xAC, h("80 01 00"), ber(0xA1, var(LLN0_MOD)))))),
        (False, data_tsdu(rsp(32, ber(0xA0, h("80 01 00 81 01 02"))))),
        (False, data_tsdu(rsp(33, ber(0xBF48, h("80 01 05"), ber(0xA1, h("80 02 0400")))))),
        (False, data_tsdu(rsp(36, ber(0xBB, ber(0x80, bytes(30)), h("81 01 00"))))),
        (True, data_tsdu(CANCEL)), (True, CONCLUDE), (False, data_tsdu(h("8c 00"))),
    ]],
]


@needs_tshark
def test_vectors_agree_with_tshark(tmp_path: Path) -> None:
    """The built vectors in one capture: tshark reads the same PDUs, invoke ids, services and
    read/write names (which also shows the vectors are well-formed MMS)."""
    path = tmp_path / "vectors.pcap"
    _capture(path, SYNTHETIC)
    matched, total, diffs = agreement(_ours(path), _tshark_mms(path))
    print(f"vectors.pcap: mms {matched}/{total} PDUs agree with tshark")
    assert total == len(SYNTHETIC) - 2 and matched == total, diffs


def test_fixture_records_read_as_a_plant_engineer_would() -> None:
    """The write capture: a client writes 0 to "mu" and the server answers oddly."""
    path = next((p for p in MMS_PCAPS if p.name == "iec61850_write.pcap"), None)
    if path is None:
        pytest.skip("fixture capture iec61850_write.pcap is missing")
    recs = agent_records(path, "mms")
    kinds = [(r["is_request"], r["mms"].get("pdu_type"), r["mms"].get("service"))
             for r in recs]
    assert kinds[0] == (True, "initiate_request", None)
    write = next(r["mms"] for r in recs if r["mms"].get("service") == "write")
    assert (write["item"], write["values"]) == ("mu", [0])
