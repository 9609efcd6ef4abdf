"""MMS (ISO 9506, IEC 61850-8-1) over the ISO session, presentation and ACSE layers.

Specs: ISO 8327-1 / ITU-T X.225 clause 8 (SPDU structure: SI, LI with the three-octet 0xFF
form, PI and PGI units; the CONNECT, ACCEPT, REFUSE, FINISH, DISCONNECT, ABORT, GIVE TOKENS and
DATA TRANSFER SPDUs) and its basic concatenation rule (a category 0 SPDU, GIVE TOKENS, heads
every TSDU that carries a DATA TRANSFER, so data TSDUs start 01 00 01 00); ISO 8823-1 / X.226
clause 8 (CP-type, CPA-PPDU, CPR-PPDU, ARU/ARP-PPDU; User-data: fully-encoded-data
[APPLICATION 1], PDV-lists with a presentation-context-identifier and a single-ASN1-type
value); ISO 8650-1 / X.227 (AARQ, AARE, RLRQ, RLRE, ABRT; the MMS initiate PDU rides in the
user-information EXTERNAL); ISO 9506-2 (2003), the MMSpdu (confirmed request, response and
error, unconfirmed, reject, cancel, initiate, conclude) and the protocol of each service (VMD
support, domain and program invocation management, variable access, files), with
IEC 61850-8-1 (Ed. 2) clause 8 (the Data types and object names "LD/LN$FC$DO$DA") and clause
17 (reports as information reports on the "RPT" variable list). The ASN.1 is read as
Wireshark's mms.asn spells it. BER (X.690) throughout, read by ``mms_ber.py``; big-endian.
The names of every layer are in ``mms_tables.py``.

TPKT/COTP framing and DT reassembly belong to ``cotp.py`` (TCP port 102, which owns the
``DECODER``): it hands every TSDU that is neither S7comm nor S7comm-plus to :func:`decode`,
with this connection's :class:`MMSState` (named by ``decode.state``). A TSDU whose first
octet is no SPDU identifier is declined (``None``) and stays a ``cotp`` record, and so is,
until the connection has carried one ACSE or MMS PDU, a TSDU that does not reach one.

A record carries ``pdu_type_code, pdu_type`` (tshark's MMSpdu names in snake case,
"confirmed_request"), ``invoke_id``, ``service_code, service`` (the ConfirmedServiceRequest /
Response or UnconfirmedService choice the PDU names, "get_name_list"), and the service's
fields: object names as ``domain, item`` (the first) and ``items``
("IED1LD0/LLN0$ST$Mod$stVal", bounded, with ``item_count``), ``variable_list``, data
``values`` (bounded), ``access_results`` ("success" or the DataAccessError name),
``object_class``/``object_scope``/``identifiers`` (GetNameList), ``vendor_name, model_name,
revision`` (Identify, also ``Message.identity``), ``program_invocation``, ``file_name``,
``frsm_id``/``ulsm_id``, ``more_follows``, ``report_id``, the initiate parameters, and for
errors ``error_class_code, error_class, error_code, error``. Responses and errors are paired
with their request by invoke id (at most ``limits.max_pending`` outstanding per connection)
and take its names; an error, which names no service, takes the request's. Connection set-up
and release add ``spdu_type_code, spdu_type`` and the ACSE APDU (``acse_apdu``,
``application_context``, AP titles and AE qualifiers, ``acse_result``,
``authentication_mechanism``; a password itself is never recorded).

``Message.kind`` is the service name ("read", "write", "start", "kill", "download_segment",
"information_report", "initiate", "conclude", "cancel", "reject"), ``<service>_exception``
for error PDUs; a response that names no valid service takes its request's. Without an MMS
PDU the kind is "associate", "release" or "abort" (ACSE) or "session_<spdu>".
``is_request``: requests True, responses and errors False, unconfirmed and reject None.

Anomalies (prefix ``mms.``): ``invalid_session`` (SPDU or parameter lengths past the TSDU, a
concatenation the standard does not allow), ``invalid_presentation`` (no presentation data
where it belongs), ``invalid_ber`` (an encoding or tag the PDU cannot have), ``truncated`` (a
value or mandatory element missing at the end of its container), ``unknown_pdu``,
``unknown_service``, ``unsolicited_response`` (a response or error with no pending request),
``too_many_pending``.
"""
from __future__ import annotations

from typing import Any

import dpkt

from edge_agent.decode import DECODE_ERRORS, Limits, Message
from edge_agent.decode.mms_ber import (BER_APPLICATION_CONS, BER_CLASS_MASK, BER_CONTEXT,
                                       BER_CONTEXT_CONS, BER_EXTERNAL, BER_INTEGER, BER_OID,
                                       BER_SEQUENCE, BER_SET, BER_UNIVERSAL, BER_UNIVERSAL_CONS,
                                       BERError, access_results, access_spec, children, integer,
                                       name_of, object_name, oid, request_fields,
                                       response_fields, service_error, status_fields, tlv)
from edge_agent.decode.mms_tables import (MMS_SERVICES, SVC_IDENTIFY, SES_SPDUS, SES_GT_DT, SES_PT,
                                          SES_FINISH, SES_DISCONNECT, SES_REFUSE, SES_CONNECT,
                                          SES_ACCEPT, SES_ABORT, SES_IS_REQUEST, SES_USER_DATA,
                                          SES_EXTENDED_USER_DATA, SES_REASON_CODE, SES_LONG_LENGTH,
                                          SES_REFUSE_REASONS, ACSE_APDUS, ACSE_KINDS,
                                          ACSE_IS_REQUEST, ACSE_USER_INFORMATION, ACSE_PASSWORD,
                                          ACSE_TITLES, ACSE_RESULTS, ACSE_USER_DIAGNOSTICS,
                                          ACSE_PROVIDER_DIAGNOSTICS, ACSE_RELEASE_REASONS,
                                          ACSE_ABORT_SOURCES, ACSE_AUTHENTICATION, MMS_PDUS,
                                          PDU_REQUEST, PDU_RESPONSE, PDU_ERROR, PDU_UNCONFIRMED,
                                          PDU_REJECT, PDU_CANCEL_ERROR, PDU_INITIATE_ERROR,
                                          PDU_CONCLUDE_ERROR, MMS_PDU_KINDS, MMS_PDU_IS_REQUEST,
                                          MMS_UNCONFIRMED, MMS_REJECTS, MMS_INITIATE_FIELDS,
                                          MMS_INITIATE_DETAIL, IEC61850_REPORT)


class SPDU(dpkt.Packet):
    """ISO 8327-1 SPDU header (one-octet LI form); ``data`` is its parameters and, for
    DATA TRANSFER, the user information. Test vectors are built with it."""

    __hdr__ = (
        ("si", "B", 1),           # SPDU identifier
        ("li", "B", 0),           # parameter octets that follow; 0xFF: two-octet length next
    )


class SPDUParameter(dpkt.Packet):
    """ISO 8327-1 PI/PGI unit header (one-octet length form)."""

    __hdr__ = (
        ("code", "B", 0xC1),      # PI or PGI code; 193 Session User Data
        ("length", "B", 0),
    )


# Request context a response or error takes when it has none of its own
# (an error, which names no service, takes the request's; a response names its own).
MMS_RESPONSE_CONTEXT_KEYS = ("domain", "item", "items", "item_count", "variable_list",
                             "program_invocation", "file_name", "frsm_id", "ulsm_id",
                             "object_class_code", "object_class", "object_scope")
MMS_CONTEXT_KEYS = MMS_RESPONSE_CONTEXT_KEYS + ("service_code", "service")

A_SESSION = "mms.invalid_session"
A_PRESENTATION = "mms.invalid_presentation"
A_UNKNOWN_PDU = "mms.unknown_pdu"
A_UNKNOWN_SERVICE = "mms.unknown_service"
A_TRUNCATED = "mms.truncated"
A_INVALID_BER = "mms.invalid_ber"
A_UNSOLICITED = "mms.unsolicited_response"
A_TOO_MANY_PENDING = "mms.too_many_pending"

Fields = dict[str, Any]


class MMSState:
    """Per connection: confirmed requests waiting for an answer, by (sent by the client,
    invoke id); at most ``limits.max_pending``, the oldest dropped first."""

    def __init__(self, limits: Limits) -> None:
        self.max_pending = max(0, limits.max_pending)
        self.pending: dict[tuple[bool, int], Fields] = {}
        self.pairing = True
        # Set by the first TSDU that reaches an ACSE or MMS PDU cleanly; until then a TSDU
        # that does not is declined, so S7 traffic that merely starts with an SPDU
        # identifier (0x32 is also minor-sync-ack) stays a cotp record.
        self.established = False

    def remember(self, key: tuple[bool, int], f: Fields, an: list[str]) -> None:
        pending = self.pending
        if key in pending:
            del pending[key]            # a reused invoke id replaces the older request
        elif len(pending) >= self.max_pending:
            if pending:
                del pending[next(iter(pending))]
            an.append(A_TOO_MANY_PENDING)
        if self.max_pending:
            pending[key] = f            # read only: the response takes MMS_CONTEXT_KEYS


class _Unpaired(MMSState):
    """Stand-in when the caller keeps no state: nothing is paired, nothing is unsolicited."""

    def __init__(self) -> None:
        super().__init__(Limits(max_pending=0))
        self.pairing = False
        self.established = True


def decode(user_data: bytes, from_client: bool, state: MMSState | None = None
           ) -> Message | None:
    """One TSDU from COTP: session SPDU(s), presentation, ACSE and the MMS PDU they carry."""
    n = len(user_data)
    if not n or user_data[0] not in SES_SPDUS:
        return None
    buf = user_data
    f: Fields = {}
    an: list[str] = []
    out: list[Any] = ["", None, None]           # kind, is_request, identity
    st = state if state is not None else _Unpaired()
    try:
        if n >= 4 and buf[0] == SES_GT_DT and buf[1] == 0 and buf[2] == SES_GT_DT and not buf[3]:
            _user_data(buf, 4, n, from_client, st, f, an, out)   # the usual GT + DT
        else:
            _session(buf, n, from_client, st, f, an, out)
    except BERError as err:
        an.append("mms." + err.anomaly)
    except DECODE_ERRORS:
        an.append(A_INVALID_BER)
    if not st.established:
        if ("pdu_type_code" not in f and "acse_apdu" not in f) or A_SESSION in an \
                or A_PRESENTATION in an:
            return None
        st.established = True
    kind = out[0]
    if not kind:
        name = f.get("spdu_type")
        kind = "session_" + name if name else "unknown"
    anomalies = () if not an else tuple(dict.fromkeys(an)) if len(an) > 1 else (an[0],)
    return Message("mms", f, out[1], anomalies, kind, out[2])


decode.state = MMSState  # type: ignore[attr-defined]


# -- session and presentation ------------------------------------------------------------------

def _length(buf: bytes, off: int, end: int) -> tuple[int, int]:
    """ISO 8327-1 LI: one octet, or 0xFF and two more. Returns (length, next)."""
    if off >= end:
        raise BERError("invalid_session")
    length = buf[off]
    if length != SES_LONG_LENGTH:
        return length, off + 1
    if off + 3 > end:
        raise BERError("invalid_session")
    return buf[off + 1] << 8 | buf[off + 2], off + 3


def _session(buf: bytes, n: int, from_client: bool, st: MMSState, f: Fields, an: list[str],
             out: list[Any]) -> None:
    si = buf[0]
    li, p = _length(buf, 1, n)
    pend = p + li
    if pend > n:
        an.append(A_SESSION)
        pend = n
    if si == SES_GT_DT or si == SES_PT:
        if pend < n:
            # Category 0 then category 2: DATA TRANSFER (or another category 2 SPDU).
            si2 = buf[pend]
            if si2 == SES_GT_DT:
                li2, p2 = _length(buf, pend + 1, n)
                if p2 + li2 > n:
                    raise BERError("invalid_session")
                _user_data(buf, p2 + li2, n, from_client, st, f, an, out)
                return
            if si2 == 0x61:          # presentation data without the DT SPDU
                an.append(A_SESSION)
                _user_data(buf, pend, n, from_client, st, f, an, out)
                return
            si = si2 if si2 in SES_SPDUS else si
            if si2 not in SES_SPDUS:
                an.append(A_SESSION)
        f["spdu_type_code"] = si
        f["spdu_type"] = "please_tokens" if si == SES_PT else SES_SPDUS[si]
        return
    f["spdu_type_code"] = si
    f["spdu_type"] = SES_SPDUS[si]
    out[1] = SES_IS_REQUEST.get(si)
    udata: tuple[int, int] | None = None
    while p < pend:
        code = buf[p]
        length, vs = _length(buf, p + 1, pend)
        ve = vs + length
        if ve > pend:
            an.append(A_SESSION)
            ve = pend
        if code == SES_USER_DATA or code == SES_EXTENDED_USER_DATA:
            udata = (vs, ve)
        elif code == SES_REASON_CODE and si == SES_REFUSE and ve > vs:
            reason = f["refuse_reason_code"] = buf[vs]
            f["refuse_reason"] = SES_REFUSE_REASONS.get(reason, "unknown")
            if ve > vs + 1:
                udata = (vs + 1, ve)
        p = ve
    if udata is None or udata[0] == udata[1]:
        return
    vs, ve = udata
    if si == SES_CONNECT or si == SES_ACCEPT or si == SES_REFUSE or si == SES_ABORT:
        apdu = _ppdu(buf, vs, ve, f, an)
        if apdu is not None:
            _apdu(buf, apdu[0], apdu[1], from_client, st, f, an, out)
    elif si == SES_FINISH or si == SES_DISCONNECT:
        _user_data(buf, vs, ve, from_client, st, f, an, out)


def _user_data(buf: bytes, off: int, end: int, from_client: bool, st: MMSState, f: Fields,
               an: list[str], out: list[Any]) -> None:
    """ISO 8823-1 User-data: fully-encoded-data [APPLICATION 1] (or simply-encoded [0])."""
    if off >= end:
        an.append(A_PRESENTATION)
        return
    if end - off > 9 and buf[off] == 0x61 and buf[off + 2] == 0x30 and buf[off + 7] == 0xA0 \
            and buf[off + 4] == BER_INTEGER and buf[off + 5] == 1 \
            and not (buf[off + 1] | buf[off + 3] | buf[off + 8]) & 0x80:
        # The usual one PDV with a one-octet context id, all lengths short: 61 L 30 L 02 01 id
        # a0 L. Taken only when the three lengths nest; anything else is walked below.
        s = off + 9
        e = s + buf[off + 8]
        if e <= off + 4 + buf[off + 3] <= off + 2 + buf[off + 1] <= end:
            _apdu(buf, s, e, from_client, st, f, an, out)
            return
    ident, number, s, e, _ = tlv(buf, off, end)
    if ident == BER_APPLICATION_CONS and number == 1:
        apdu = _pdv(buf, s, e)
    elif ident == 0x40 and number == 0:
        apdu = (s, e)
    else:
        apdu = None
    if apdu is None:
        an.append(A_PRESENTATION)
        return
    _apdu(buf, apdu[0], apdu[1], from_client, st, f, an, out)


def _pdv(buf: bytes, off: int, end: int) -> tuple[int, int] | None:
    """The first PDV-list's value: single-ASN1-type [0] or octet-aligned [1]."""
    while off < end:
        ident, number, s, e, off = tlv(buf, off, end)
        if ident != BER_UNIVERSAL_CONS or number != BER_SEQUENCE:
            continue
        while s < e:
            i, num, vs, ve, s = tlv(buf, s, e)
            if (i == BER_CONTEXT_CONS and num == 0) or (i == BER_CONTEXT and num == 1):
                return vs, ve
    return None


def _ppdu(buf: bytes, off: int, end: int, f: Fields, an: list[str]) -> tuple[int, int] | None:
    """CP-type / CPA-PPDU (SET), CPR-PPDU (SEQUENCE), ARU-PPDU ([0]): find the user data."""
    ident, number, s, e, _ = tlv(buf, off, end)
    if ident == BER_UNIVERSAL_CONS and number == BER_SET:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT_CONS and num == 2:       # normal-mode-parameters
                s, e = vs, ve
                break
        else:
            an.append(A_PRESENTATION)
            return None
    elif not (ident == BER_UNIVERSAL_CONS and number == BER_SEQUENCE
              or ident == BER_CONTEXT_CONS and number == 0):
        an.append(A_PRESENTATION)
        return None
    for i, num, vs, ve in children(buf, s, e):
        if i == BER_APPLICATION_CONS and num == 1:
            return _pdv(buf, vs, ve)
        if i == BER_CONTEXT and num == 10 and ident == BER_UNIVERSAL_CONS:
            f["presentation_provider_reason"] = integer(buf, vs, ve)    # CPR [10]
    return None


# -- ACSE --------------------------------------------------------------------------------------

def _apdu(buf: bytes, off: int, end: int, from_client: bool, st: MMSState, f: Fields,
          an: list[str], out: list[Any]) -> None:
    first = buf[off] if off < end else -1
    if first & 0xE0 == BER_APPLICATION_CONS and first & 0x1F <= 4:
        _acse(buf, off, end, from_client, st, f, an, out)
    elif first >= 0 and first & BER_CLASS_MASK == BER_CONTEXT:
        _mms(buf, off, end, from_client, st, f, an, out)
    else:
        an.append(A_UNKNOWN_PDU)


def _acse(buf: bytes, off: int, end: int, from_client: bool, st: MMSState, f: Fields,
          an: list[str], out: list[Any]) -> None:
    _, apdu, s, e, _ = tlv(buf, off, end)
    f["acse_apdu_code"] = apdu
    f["acse_apdu"] = ACSE_APDUS[apdu]
    out[0] = ACSE_KINDS[apdu]
    out[1] = ACSE_IS_REQUEST[apdu]
    titles = ACSE_TITLES[apdu] if apdu < 2 else {}
    mms: tuple[int, int] | None = None
    for i, num, vs, ve in children(buf, s, e):
        if i == BER_CONTEXT_CONS and num == ACSE_USER_INFORMATION:
            mms = _external(buf, vs, ve)
        elif apdu >= 2:
            if num == 0 and i == BER_CONTEXT:
                code = integer(buf, vs, ve)
                if apdu == 4:
                    f["abort_source_code"] = code
                    f["abort_source"] = name_of(ACSE_ABORT_SOURCES, code)
                else:
                    f["release_reason_code"] = code
                    f["release_reason"] = ACSE_RELEASE_REASONS[apdu - 2].get(code, "unknown")
        elif i != BER_CONTEXT_CONS:
            if i == BER_CONTEXT and num == (11 if apdu == 0 else 9):
                mech = oid(buf, vs, ve)
                f["authentication_mechanism"] = "password" if mech == ACSE_PASSWORD else mech
        elif num == 1:
            f["application_context"] = _inner_oid(buf, vs, ve)
        elif num in titles:
            ii, inum, ivs, ive, _ = tlv(buf, vs, ve)
            if ii == BER_UNIVERSAL and inum == BER_OID:
                f[titles[num]] = oid(buf, ivs, ive)
            elif ii == BER_UNIVERSAL and inum == BER_INTEGER:
                f[titles[num]] = integer(buf, ivs, ive)
        elif num == (12 if apdu == 0 else 10):
            # The authentication value names its kind only: a password is never recorded.
            f["authentication"] = name_of(ACSE_AUTHENTICATION, tlv(buf, vs, ve)[1])
        elif apdu == 1 and num == 2:
            code = f["acse_result_code"] = integer(buf, *tlv(buf, vs, ve)[2:4])
            f["acse_result"] = name_of(ACSE_RESULTS, code)
        elif apdu == 1 and num == 3:
            ii, source, ivs, ive, _ = tlv(buf, vs, ve)
            code = integer(buf, *tlv(buf, ivs, ive)[2:4])
            f["acse_diagnostic_code"] = code
            f["acse_diagnostic"] = name_of(ACSE_USER_DIAGNOSTICS if source == 1
                                         else ACSE_PROVIDER_DIAGNOSTICS, code)
    if mms is not None:
        _mms(buf, mms[0], mms[1], from_client, st, f, an, out)
    if apdu == 1 and f.get("acse_result_code") and not out[0].endswith("_exception"):
        out[0] += "_exception"


def _external(buf: bytes, off: int, end: int) -> tuple[int, int] | None:
    """Association-information: EXTERNALs; the MMS PDU is the first one's encoding."""
    for i, num, s, e in children(buf, off, end):
        if i == BER_UNIVERSAL_CONS and num == BER_EXTERNAL:
            for ii, inum, vs, ve in children(buf, s, e):
                if (ii == BER_CONTEXT_CONS and inum == 0) or (ii == BER_CONTEXT and inum == 1):
                    return vs, ve
    return None


def _inner_oid(buf: bytes, off: int, end: int) -> str:
    i, num, s, e, _ = tlv(buf, off, end)
    if i != BER_UNIVERSAL or num != BER_OID:
        raise BERError("invalid_ber")
    return oid(buf, s, e)


# -- MMS PDUs ----------------------------------------------------------------------------------

def _mms(buf: bytes, off: int, end: int, from_client: bool, st: MMSState, f: Fields,
         an: list[str], out: list[Any]) -> None:
    ident, pdu, s, e, _ = tlv(buf, off, end)
    if ident & BER_CLASS_MASK != BER_CONTEXT or pdu >= len(MMS_PDUS):
        f["pdu_type"] = "unknown"
        an.append(A_UNKNOWN_PDU)
        out[0] = "unknown"
        return
    f["pdu_type_code"] = pdu
    f["pdu_type"] = MMS_PDUS[pdu]
    out[1] = MMS_PDU_IS_REQUEST[pdu]
    kind = MMS_PDU_KINDS[pdu]
    if pdu == PDU_REQUEST or pdu == PDU_RESPONSE:
        kind = _confirmed(buf, s, e, pdu == PDU_REQUEST, from_client, st, f, an)
        if f.get("service_code") == SVC_IDENTIFY and "vendor_name" in f:
            out[2] = {"vendor": f["vendor_name"], "model": f.get("model_name", ""),
                      "firmware": f.get("revision", "")}
    elif pdu == PDU_ERROR or pdu == PDU_CANCEL_ERROR:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num == 0:
                f["invoke_id"] = integer(buf, vs, ve, False)
            elif i == BER_CONTEXT_CONS and num == (2 if pdu == PDU_ERROR else 1):
                service_error(buf, vs, ve, f)
        if "invoke_id" not in f or "error_class" not in f:
            an.append(A_TRUNCATED)
        if pdu == PDU_ERROR:
            if "invoke_id" in f:
                _paired(st, from_client, f["invoke_id"], f, an, True)
            kind = f.get("service", "unknown") + "_exception"
    elif pdu == PDU_UNCONFIRMED:
        kind = _unconfirmed(buf, s, e, f, an)
    elif pdu == PDU_REJECT:
        for i, num, vs, ve in children(buf, s, e):
            if i == BER_CONTEXT and num == 0:
                f["invoke_id"] = integer(buf, vs, ve, False)
            elif i == BER_CONTEXT and num in MMS_REJECTS:
                category, reasons = MMS_REJECTS[num]
                f["reject_pdu_code"] = num
                f["reject_pdu"] = category
                code = f["reject_reason_code"] = integer(buf, vs, ve)
                f["reject_reason"] = reasons.get(code, "unknown")
        if f.get("reject_pdu_code") == 1 and "invoke_id" in f:
            _paired(st, from_client, f["invoke_id"], f, None, True)
    elif pdu == 5 or pdu == 6:                      # cancel: the invoke id to cancel
        f["invoke_id"] = integer(buf, s, e, False)
    elif pdu == 8 or pdu == 9:
        _initiate(buf, s, e, f)
    elif pdu == PDU_INITIATE_ERROR or pdu == PDU_CONCLUDE_ERROR:
        service_error(buf, s, e, f)
    out[0] = kind


def _confirmed(buf: bytes, s: int, e: int, is_request: bool, from_client: bool, st: MMSState,
               f: Fields, an: list[str]) -> str:
    i, num, vs, ve, off = tlv(buf, s, e)
    if i != BER_UNIVERSAL or num != BER_INTEGER:
        raise BERError("invalid_ber")
    invoke = f["invoke_id"] = integer(buf, vs, ve, False)
    if is_request and off < e and buf[off] == 0x30:     # listOfModifier
        off = tlv(buf, off, e)[4]
    name = "unknown"
    if off >= e:
        an.append(A_TRUNCATED)
    else:
        i, code, vs, ve, _ = tlv(buf, off, e)
        if i & BER_CLASS_MASK != BER_CONTEXT:
            an.append(A_UNKNOWN_SERVICE)
        else:
            f["service_code"] = code
            name = f["service"] = MMS_SERVICES[code] if code < len(MMS_SERVICES) else "unknown"
            if name == "unknown":
                an.append(A_UNKNOWN_SERVICE)
            elif is_request:
                request_fields(code, i, buf, vs, ve, f)
            else:
                response_fields(code, buf, vs, ve, f)
    if is_request:
        if st.pairing:
            st.remember((from_client, invoke), f, an)
        return name
    req = _paired(st, from_client, invoke, f, an, False)
    # A response that names no service of its own is still the answer to its request.
    return req.get("service") or name if req is not None and name == "unknown" else name


def _paired(st: MMSState, from_client: bool, invoke: int, f: Fields, an: list[str] | None,
            with_service: bool) -> Fields | None:
    """Pop the request this answers (sent by the other side) and take its context."""
    if not st.pairing:
        return None
    req = st.pending.pop((not from_client, invoke), None)
    if req is None:
        if an is not None:
            an.append(A_UNSOLICITED)
        return None
    for k in MMS_CONTEXT_KEYS if with_service else MMS_RESPONSE_CONTEXT_KEYS:
        if k in req and k not in f:
            f[k] = req[k]
    return req


def _initiate(buf: bytes, s: int, e: int, f: Fields) -> None:
    for i, num, vs, ve in children(buf, s, e):
        if i == BER_CONTEXT and num < 4:
            f[MMS_INITIATE_FIELDS[num]] = integer(buf, vs, ve)
        elif i == BER_CONTEXT_CONS and num == 4:
            for ii, inum, ivs, ive in children(buf, vs, ve):
                if ii == BER_CONTEXT and inum == 0:
                    f["version_number"] = integer(buf, ivs, ive)
                elif ii == BER_CONTEXT and inum < 3 and ive > ivs:
                    f[MMS_INITIATE_DETAIL[inum]] = buf[ivs + 1:ive].hex()   # after unused bits


def _unconfirmed(buf: bytes, s: int, e: int, f: Fields, an: list[str]) -> str:
    if s >= e:
        an.append(A_TRUNCATED)
        return "unknown"
    i, num, vs, ve, _ = tlv(buf, s, e)
    if i & BER_CLASS_MASK != BER_CONTEXT:
        an.append(A_UNKNOWN_SERVICE)
        return "unknown"
    f["service_code"] = num
    name = f["service"] = name_of(MMS_UNCONFIRMED, num)
    if name == "unknown":
        an.append(A_UNKNOWN_SERVICE)
    elif num == 0:                                  # informationReport
        kids = children(buf, vs, ve)
        if kids:
            access_spec(buf, *kids[0], f)
        if len(kids) < 2 or kids[1][:2] != (BER_CONTEXT_CONS, 0):
            an.append(A_TRUNCATED)
        else:
            access_results(buf, kids[1][2], kids[1][3], f)
            values = f["values"]
            if f.get("variable_list") == IEC61850_REPORT and values and isinstance(values[0],
                                                                                   str):
                f["report_id"] = values[0]
            if all(r == "success" for r in f["access_results"]):
                del f["access_results"]
    elif num == 1:
        status_fields(buf, vs, ve, f)
    else:
        for ii, inum, ivs, ive in children(buf, vs, ve):
            if ii == BER_CONTEXT_CONS and inum == 0:    # eventEnrollmentName
                object_name(buf, ivs, ive, f)
    return name

