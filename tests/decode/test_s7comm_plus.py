"""S7comm-plus over ISO-on-TCP: vectors from s7comm_plus.pcap (an S7-1500, protocol V3) laid
out field by field, fragments, keep-alives, TLS, anomalies, and the whole capture checked
against the Zeek/ICSNPP s7comm_plus.log baseline (TShark 4.0 has no S7comm-plus dissector)."""
from __future__ import annotations

import random
import subprocess
from typing import Any

import pytest

from edge_agent.decode import Limits, Message
from edge_agent.decode import cotp
from edge_agent.decode.cotp import DECODER, COTPSession
from edge_agent.decode.s7comm_plus import S7PlusHeader, S7PlusRequest, S7PlusResponse
from tests.decode import fuzz
from tests.decode.test_cotp import ISO_PREFIXES
from tests.decode.test_s7comm import (BASELINES, PCAPS, TSHARK, _zeek_rows, h, needs_fixtures,
                                      pipeline_records, tpkt)

DIGEST_7 = "e969a95a852ab0e288480ccecb618e48779f4b68a1ce9a9c42cd6aa536800683"
TRAILER = "72 03 0000"                                  # protocol id | version | length 0

# frame 4: notification of subscription 0x70000e51 (the HMI's cyclic values)
NOTIFICATION = h("72 03 0057 | 20 | 78fb7dbb6ff24dad4346304fb45a1779"
                 "  042f4cd127b4e690b2d25a82aad4e65b"
                 "| 33 | 70000e51 | 0400000000 00ca8ec149 0192 00000019 000e417e2084"
                 "  920000001a000e4146c000 920000001b000e4193e798 0000000000 |" + TRAILER)
# frame 7: SetVariable request. header | digest length, digest | opcode | reserved | function |
# reserved | sequence | session id | transport flags (0x40: no response wanted) | object
SET_VARIABLE = h("72 03 0059 | 20 |" + DIGEST_7 + "| 31 | 0000 | 04f2 | 0000 | 831a | 70000e4d"
                 "| 74 | 70000e51 01881d000700ce000004e88969001200000000896a001300896b0004"
                 "  00000084eb27 00000000 |" + TRAILER)
# frames 30/31: GetMultiVariables request (flags 0x34: answered) and its response
GET_MULTI = h("72 03 006a | 20 | eeed63815b2cdcb7e899d568a24eb02b45ed2246a88700849f03a872687a7c09"
              "| 31 | 0000 | 054c | 0000 | 831d | 70000e4d | 34 | 00000000030e008780809c4d018e"
              "  320081490288390000814902883901000004e88969001200000000896a001300896b0004"
              "  0000819a73 00000000 |" + TRAILER)
GET_MULTI_RESP = h("72 03 0043 | 20 | 3dcac8ee113108f0defe64eff4faf610"
                   "  6fe1fa3d75064cde9b8314d9f1e276a3"
                   "| 32 | 0000 | 054c | 0000 | 831d | 34 | 00010004010200088372030008be0400"
                   "  0083a110 00000000 |" + TRAILER)


def sess(**limits: int) -> COTPSession:
    s = DECODER.session(Limits(**limits))
    assert isinstance(s, COTPSession)
    return s


def feed(s: COTPSession, tsdu: bytes, from_client: bool) -> list[Message]:
    return DECODER.safe_feed(s, tpkt(tsdu), from_client, 0.0)


def one(s: COTPSession, tsdu: bytes, from_client: bool) -> Message:
    msgs = feed(s, tsdu, from_client)
    assert len(msgs) == 1, msgs
    return msgs[0]


def v1(body: str, version: int = 1) -> bytes:
    """A PDU without integrity part (V1/V2): header, data part, trailer."""
    data = h(body)
    return bytes(S7PlusHeader(version=version, data_length=len(data), data=data)) + \
        bytes([0x72, version, 0, 0])


def test_vectors_are_consistent() -> None:
    for pdu in (NOTIFICATION, SET_VARIABLE, GET_MULTI, GET_MULTI_RESP):
        hdr = S7PlusHeader(pdu)
        assert (hdr.protocol_id, hdr.version) == (0x72, 3)
        assert len(pdu) == 4 + hdr.data_length + 4 and pdu[4] == 32


# --- round trip and functions -----------------------------------------------------------------

def test_round_trip_set_variable() -> None:
    req = S7PlusRequest(function=0x04F2, seq=0x831A, session_id=0x70000E4D, transport_flags=0x74,
                        data=SET_VARIABLE[4 + 33 + 14:-4])
    data = b"\x20" + bytes.fromhex(DIGEST_7) + bytes(req)
    built = bytes(S7PlusHeader(version=3, data_length=len(data), data=data)) + h(TRAILER)
    assert built == SET_VARIABLE
    msg = one(sess(), SET_VARIABLE, True)
    assert msg.proto == "s7comm_plus" and msg.kind == "set_variable" and msg.is_request is True
    assert msg.anomalies == ()
    assert msg.fields == {"version": 3, "version_name": "v3", "data_length": 0x59,
                          "digest_length": 32, "opcode": 0x31, "opcode_name": "request",
                          "func_code": 0x04F2, "func": "set_variable", "seq": 0x831A,
                          "session_id": 0x70000E4D, "transport_flags": 0x74}


def test_notification() -> None:
    msg = one(sess(), NOTIFICATION, False)
    assert msg.kind == "notification" and msg.is_request is None and msg.anomalies == ()
    assert (msg.fields["opcode_name"], msg.fields["subscription_id"]) == ("notification",
                                                                          0x70000E51)
    assert "func" not in msg.fields


def test_request_and_response_pair_by_sequence_number() -> None:
    s = sess()
    req = one(s, GET_MULTI, True)
    resp = one(s, GET_MULTI_RESP, False)
    assert req.kind == resp.kind == "get_multi_variables"
    assert resp.is_request is False and resp.anomalies == ()
    assert (resp.fields["opcode_name"], resp.fields["seq"], resp.fields["transport_flags"]) \
        == ("response", 0x831D, 0x34)
    head = S7PlusResponse(GET_MULTI_RESP[37:])
    assert (head.opcode, head.function, head.seq, head.transport_flags) == (0x32, 0x054C,
                                                                            0x831D, 0x34)
    assert bytes(S7PlusResponse(function=0x054C, seq=0x831D, transport_flags=0x34,
                                data=head.data)) == GET_MULTI_RESP[37:]
    assert s.plus is not None and not s.plus.pending


def test_requests_wanting_no_response_are_not_held() -> None:
    s = sess(max_pending=2)
    for seq in range(5):
        msg = one(s, SET_VARIABLE[:44] + seq.to_bytes(2, "big") + SET_VARIABLE[46:], True)
        assert msg.anomalies == ()
    assert s.plus is not None and not s.plus.pending


def test_v1_create_object_and_the_plc_identity() -> None:
    s = sess()
    req = one(s, v1("31 | 0000 | 04ca | 0000 | 0001 | 00000120 | 36 | 0000011d"), True)
    assert req.kind == "create_object" and "digest_length" not in req.fields
    resp = one(s, v1("32 | 0000 | 04ca | 0000 | 0001 | 00 | 0000 a1 | 5f"
                     "| 31 3b 36 45 53 37 20 35 31 31 2d 31 41 4b 30 30 2d 30 41 42 30 20 3b"
                     "  56 32 2e 30 | 00"), False)      # "1;6ES7 511-1AK00-0AB0 ;V2.0"
    assert resp.anomalies == () and resp.kind == "create_object"
    assert resp.identity == {"vendor": "Siemens", "order_number": "6ES7 511-1AK00-0AB0",
                             "firmware": "V2.0", "device_type": "plc"}


def test_error_function_response() -> None:
    s = sess()
    one(s, v1("31 | 0000 | 0586 | 0000 | 0007 | 00000120 | 34 | 00"), True)
    msg = one(s, v1("32 | 0000 | 05a9 | 0000 | 0007 | 00 | 8e 01"), False)
    assert (msg.kind, msg.fields["func"], msg.is_request) == ("error", "error", False)
    assert msg.anomalies == ()


def test_keep_alive_and_system_event() -> None:
    s = sess()
    ka = one(s, h("72 | ff | 05 | 00"), False)
    assert ka.kind == "keep_alive" and ka.fields["keep_alive_seq"] == 5 and ka.anomalies == ()
    ev = one(s, v1("8c 01 02 03", version=0xFE), False)
    assert ev.kind == "system_event" and ev.fields["version_name"] == "system_event"


def test_tls_after_init_ssl_is_counted_not_parsed() -> None:
    s = sess()
    one(s, v1("31 | 0000 | 05b3 | 0000 | 0002 | 00000120 | 34 | 00"), True)
    one(s, v1("32 | 0000 | 05b3 | 0000 | 0002 | 00 | 00"), False)
    msg = one(s, h("17 03 03 0010") + bytes(16), True)
    assert (msg.proto, msg.kind) == ("s7comm_plus", "encrypted")
    assert msg.fields == {"tls_content_type": 0x17, "encrypted_length": 21}


# --- fragments and framing --------------------------------------------------------------------

def test_fragmented_pdu_is_reassembled() -> None:
    """Each fragment has a header and (V3) its own integrity part; only the last a trailer."""
    s = sess()
    body = GET_MULTI[37:-4]
    digest = b"\x20" + bytes(32)
    first = bytes(S7PlusHeader(version=3, data_length=33 + 20, data=digest + body[:20]))
    last = bytes(S7PlusHeader(version=3, data_length=33 + len(body) - 20,
                              data=digest + body[20:])) + h(TRAILER)
    assert feed(s, first, True) == []
    msg = one(s, last, True)
    assert msg.kind == "get_multi_variables" and msg.anomalies == ()
    assert msg.fields["fragments"] == 2 and msg.fields["seq"] == 0x831D


def test_fragments_are_bounded() -> None:
    s = sess(max_pdu=64)
    frag = bytes(S7PlusHeader(version=1, data_length=48, data=bytes(48)))
    assert feed(s, frag, True) == []
    assert one(s, frag, True).anomalies == ("s7comm_plus.reassembly_overflow",)
    assert s.plus is not None and not s.plus.fragments


def test_split_partial_frame() -> None:
    frame = tpkt(SET_VARIABLE)
    assert DECODER.split(frame[:40]) == ([], 0)
    assert DECODER.split(frame + frame[:2]) == ([frame], len(frame))


def test_split_several_pdus() -> None:
    buf = tpkt(GET_MULTI) + tpkt(NOTIFICATION) + tpkt(GET_MULTI_RESP)
    pdus, used = DECODER.split(buf)
    assert used == len(buf) and len(pdus) == 3
    s = sess()
    kinds = [m.kind for p, c in zip(pdus, (True, False, False))
             for m in DECODER.safe_feed(s, p, c, 0.0)]
    assert kinds == ["get_multi_variables", "notification", "get_multi_variables"]


# --- malformed input --------------------------------------------------------------------------

MALFORMED = [
    ("short", h("72 03 00"), True, "s7comm_plus.invalid_length"),
    ("length_past_end", h("72 03 00ff 31 0000"), True, "s7comm_plus.invalid_length"),
    ("digest_length", SET_VARIABLE[:4] + b"\x10" + SET_VARIABLE[5:], True,
     "s7comm_plus.invalid_length"),
    ("bad_trailer", SET_VARIABLE[:-4] + h("00 00 00 00"), True, "s7comm_plus.invalid_length"),
    ("short_request", v1("31 0000 04f2"), True, "s7comm_plus.invalid_length"),
    ("unknown_opcode", v1("44 0000 04f2 0000 0001 00"), True, "s7comm_plus.unknown_opcode"),
    ("unknown_function", v1("31 0000 0999 0000 0001 00000120 34"), True,
     "s7comm_plus.unknown_function"),
    ("unsolicited", GET_MULTI_RESP, False, "s7comm_plus.unsolicited_response"),
]


@pytest.mark.parametrize("name, pdu, from_client, anomaly", MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed(name: str, pdu: bytes, from_client: bool, anomaly: str) -> None:
    msg = one(sess(), pdu, from_client)
    assert anomaly in msg.anomalies and msg.proto == "s7comm_plus"


def test_unknown_version_on_an_s7comm_plus_connection(monkeypatch: Any) -> None:
    monkeypatch.setattr(cotp, "_mms_hook", None)
    s = sess()
    one(s, NOTIFICATION, False)
    msg = one(s, v1("31 0000 04f2 0000 0001 00000120 34", version=9), True)
    assert msg.anomalies == ("s7comm_plus.unknown_version",) and msg.fields["version"] == 9
    # on a fresh connection 0x72 with a version no S7comm-plus uses is not taken for it
    assert one(sess(), v1("31 0000", version=9), True).proto == "cotp"


def test_too_many_pending() -> None:
    s = sess(max_pending=2)
    msgs = [one(s, GET_MULTI[:44] + bytes([0, i]) + GET_MULTI[46:], True) for i in range(3)]
    assert [m.anomalies for m in msgs] == [(), (), ("s7comm_plus.too_many_pending",)]
    assert s.plus is not None and len(s.plus.pending) == 2


def test_every_truncation_decodes() -> None:
    for pdu in (NOTIFICATION, SET_VARIABLE, GET_MULTI_RESP):
        for cut in range(2, len(pdu) - 4):
            msgs = feed(sess(), pdu[:cut], True)
            # no trailer: a first fragment waiting for the rest, or a header it cannot read
            assert msgs == [] or msgs[0].anomalies, (pdu.hex(), cut)
            assert not any(a.endswith(".malformed") for m in msgs for a in m.anomalies)


# --- fuzz sanity ------------------------------------------------------------------------------

SEEDS = [NOTIFICATION, SET_VARIABLE, GET_MULTI, GET_MULTI_RESP, h("72 ff 05 00"),
         v1("31 0000 04ca 0000 0001 00000120 36 00"), v1("8c 01", version=0xFE)]


def _data_length(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 4:
        buf[2:4] = rng.randrange(0, 200).to_bytes(2, "big")      # data length


def _version(rng: random.Random, buf: bytearray) -> None:
    if len(buf) >= 2:
        buf[1] = rng.choice((1, 2, 3, 0xFE, 0xFF, 7))


def _opcode(rng: random.Random, buf: bytearray) -> None:
    if len(buf) > 40:
        buf[37] = rng.choice((0x31, 0x32, 0x33, 0x02, 0x99))


MUTATE = fuzz.Mutator((fuzz.overwrite, fuzz.truncate, fuzz.append(12), _data_length, _version,
                       _opcode))


def _bounded(s: COTPSession) -> bool:
    return s.plus is None or (len(s.plus.pending) <= 8
                              and all(len(d) <= 1024 for d, _ in s.plus.fragments.values()))


def test_fuzz_no_exception_escapes() -> None:
    decoded = fuzz.run(DECODER, SEEDS, lambda rng, seed: tpkt(MUTATE(rng, seed)), seed=0x72,
                       session=lambda: sess(max_pending=8, max_pdu=1024), renew=10_000,
                       units=lambda rng, i, frame: fuzz.framed(DECODER, frame),
                       prefixes=ISO_PREFIXES, bounded=_bounded)
    assert decoded >= 50_000


# --- the real capture -------------------------------------------------------------------------

def _icsnpp_view(r: dict[str, Any]) -> tuple[str, str, str, str]:
    p = r["s7comm_plus"]
    func = f"0x{p['func_code']:04x}" if "func_code" in p else "-"
    return ("T" if r["src_port"] != 102 else "F", str(p["version"]), f"0x{p['opcode']:02x}",
            func)


@needs_fixtures
def test_pcap_matches_icsnpp_s7comm_plus_log() -> None:
    records = [r for r in pipeline_records(PCAPS / "s7comm_plus.pcap")
               if r["proto"] == "s7comm_plus"]
    ours = [_icsnpp_view(r) for r in records]
    theirs = [(row[6], row[11], row[12], row[14])
              for row in _zeek_rows(BASELINES / "s7comm_plus" / "s7comm_plus.log")]
    same = sum(a == b for a, b in zip(ours, theirs))
    pct = 100.0 * same / max(len(ours), len(theirs))
    print(f"s7comm_plus.pcap: {pct:.2f}% agreement with ICSNPP s7comm_plus.log "
          f"({same}/{len(theirs)} PDUs)")
    assert pct >= 99.0
    assert all(r["anomalies"] == [] for r in records)
    names = {r["s7comm_plus"].get("func") for r in records}
    assert names == {None, "set_variable", "get_multi_variables", "set_multi_variables"}


def _tshark_knows_s7comm_plus() -> bool:
    if TSHARK is None:
        return False
    res = subprocess.run([TSHARK, "-G", "protocols"], capture_output=True, text=True)
    return any(line.split("\t")[-1] in ("s7comm-plus", "s7comm_plus")
               for line in res.stdout.splitlines())


@needs_fixtures
@pytest.mark.skipif(not _tshark_knows_s7comm_plus(),
                    reason="this tshark has no S7comm-plus dissector (Wireshark ships none; "
                           "the capture is checked against ICSNPP's baseline instead)")
def test_pcap_agrees_with_tshark() -> None:   # pragma: no cover - needs the Wiens plugin
    res = subprocess.run([str(TSHARK), "-r", str(PCAPS / "s7comm_plus.pcap"), "-Y",
                          "s7comm-plus.data.opcode", "-T", "fields", "-e",
                          "s7comm-plus.data.opcode"], capture_output=True, text=True, check=True)
    theirs = [int(v, 0) for line in res.stdout.split() for v in line.split(",")]
    ours = [r["s7comm_plus"]["opcode"] for r in pipeline_records(PCAPS / "s7comm_plus.pcap")
            if r["proto"] == "s7comm_plus" and "opcode" in r["s7comm_plus"]]
    assert sum(a == b for a, b in zip(ours, theirs)) >= 0.99 * len(theirs)

