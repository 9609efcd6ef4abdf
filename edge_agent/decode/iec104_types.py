"""IEC 60870-5-101/104 ASDU type identifications and their information elements.

Spec: IEC 60870-5-101 (2003) 7.2.1 (type identification), 7.2.3 (cause of transmission),
7.2.6 (information elements: SIQ, DIQ, QDS, VTI, NVA, SVA, IEEE STD 754, BCR, SEP, SPE, OCI,
QDP, SCD, SCO, DCO, RCO, QOS, COI, QOI, QCC, QRP, QPM, QPA, FBP, TSC, CP16/CP24/CP56Time2a and
the file transfer elements) and 7.3 (the ASDUs); IEC 60870-5-104 (2006) 9 (which ASDUs 104
uses); IEC 60870-5-7 for the security types 81-95, named only. Every multi-byte element is
little-endian. Kept apart from :mod:`edge_agent.decode.iec104` because it is the ASDU table.

An element parser fills one information object (a dict that already holds ``ioa``) with
``value`` and, as its type has them, ``quality`` (the names of the set quality bits, empty when
the value is good), ``time`` (ISO 8601 for CP56Time2a; ``mm:ss.mmm`` for CP24Time2a),
``select`` and ``qualifier`` (commands), ``transient``, ``sequence`` and others.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
Parser = Callable[[bytes, int, Obj], None]

_H = struct.Struct("<H")
_h = struct.Struct("<h")
_I = struct.Struct("<I")
_i = struct.Struct("<i")
_f = struct.Struct("<f")

# 7.2.1.1 type identification: name (the standard's mnemonic in lower case) by code
IEC104_TYPES: dict[int, str] = {
    1: "m_sp_na_1", 2: "m_sp_ta_1", 3: "m_dp_na_1", 4: "m_dp_ta_1", 5: "m_st_na_1",
    6: "m_st_ta_1", 7: "m_bo_na_1", 8: "m_bo_ta_1", 9: "m_me_na_1", 10: "m_me_ta_1",
    11: "m_me_nb_1", 12: "m_me_tb_1", 13: "m_me_nc_1", 14: "m_me_tc_1", 15: "m_it_na_1",
    16: "m_it_ta_1", 17: "m_ep_ta_1", 18: "m_ep_tb_1", 19: "m_ep_tc_1", 20: "m_ps_na_1",
    21: "m_me_nd_1", 30: "m_sp_tb_1", 31: "m_dp_tb_1", 32: "m_st_tb_1", 33: "m_bo_tb_1",
    34: "m_me_td_1", 35: "m_me_te_1", 36: "m_me_tf_1", 37: "m_it_tb_1", 38: "m_ep_td_1",
    39: "m_ep_te_1", 40: "m_ep_tf_1", 41: "s_it_tc_1",
    45: "c_sc_na_1", 46: "c_dc_na_1", 47: "c_rc_na_1", 48: "c_se_na_1", 49: "c_se_nb_1",
    50: "c_se_nc_1", 51: "c_bo_na_1", 58: "c_sc_ta_1", 59: "c_dc_ta_1", 60: "c_rc_ta_1",
    61: "c_se_ta_1", 62: "c_se_tb_1", 63: "c_se_tc_1", 64: "c_bo_ta_1",
    70: "m_ei_na_1",
    81: "s_ch_na_1", 82: "s_rp_na_1", 83: "s_ar_na_1", 84: "s_kr_na_1", 85: "s_ks_na_1",
    86: "s_kc_na_1", 87: "s_er_na_1", 90: "s_us_na_1", 91: "s_uq_na_1", 92: "s_ur_na_1",
    93: "s_uk_na_1", 94: "s_ua_na_1", 95: "s_uc_na_1",
    100: "c_ic_na_1", 101: "c_ci_na_1", 102: "c_rd_na_1", 103: "c_cs_na_1", 104: "c_ts_na_1",
    105: "c_rp_na_1", 106: "c_cd_na_1", 107: "c_ts_ta_1",
    110: "p_me_na_1", 111: "p_me_nb_1", 112: "p_me_nc_1", 113: "p_ac_na_1",
    120: "f_fr_na_1", 121: "f_sr_na_1", 122: "f_sc_na_1", 123: "f_ls_na_1", 124: "f_af_na_1",
    125: "f_sg_na_1", 126: "f_dr_ta_1", 127: "f_sc_nb_1",
}

# 7.2.3 cause of transmission (6 bits); 48-63 are for special use (private range)
IEC104_COTS: dict[int, str] = {
    1: "periodic", 2: "background", 3: "spontaneous", 4: "initialized", 5: "request",
    6: "activation", 7: "activation_con", 8: "deactivation", 9: "deactivation_con",
    10: "activation_term", 11: "return_remote", 12: "return_local", 13: "file",
    20: "interrogated_by_station",
    **{20 + g: f"interrogated_by_group_{g}" for g in range(1, 17)},
    37: "counter_interrogated_by_station",
    **{37 + g: f"counter_interrogated_by_group_{g}" for g in range(1, 5)},
    44: "unknown_type", 45: "unknown_cause", 46: "unknown_asdu_address",
    47: "unknown_object_address",
}
IEC104_COT_PRIVATE = range(48, 64)

# Types sent by the controlling station (7.2.1.1 "in control direction"), plus the file
# transfer calls it makes: with activation (or request, deactivation) they are requests.
IEC104_CONTROL_TYPES = frozenset(
    [*range(45, 52), *range(58, 65), *range(100, 108), *range(110, 114), 122, 127])
IEC104_REQUEST_COTS = frozenset({5, 6, 8})

# quality descriptor bits (7.2.6.3 QDS, 7.2.6.1 SIQ, 7.2.6.2 DIQ, 7.2.6.4 QDP, 7.2.6.9 BCR)
_QDS_BITS = ((0x01, "ov"), (0x08, "ei"), (0x10, "bl"), (0x20, "sb"), (0x40, "nt"), (0x80, "iv"))
_BCR_BITS = ((0x20, "cy"), (0x40, "ca"), (0x80, "iv"))


def _flag_table(bits: tuple[tuple[int, str], ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(name for bit, name in bits if v & bit) for v in range(256))


_QUALITY = _flag_table(_QDS_BITS)
_BCR_QUALITY = _flag_table(_BCR_BITS)
_SPE = _flag_table(((0x01, "gs"), (0x02, "sl1"), (0x04, "sl2"), (0x08, "sl3"), (0x10, "sie"),
                    (0x20, "srd")))
_OCI = _flag_table(((0x01, "gc"), (0x02, "cl1"), (0x04, "cl2"), (0x08, "cl3")))


def _r32(b: bytes, o: int) -> float | str:
    v = _f.unpack_from(b, o)[0]
    # A single-precision value printed as a double shows noise digits: keep its 7 significant.
    return float(f"{v:.7g}") if math.isfinite(v) else str(v)


def cp56(b: bytes, o: int, obj: Obj, key: str = "time") -> None:
    """CP56Time2a (7.2.6.18) as ISO 8601; years are 2000-2099 (the element holds 0-99)."""
    ms = _H.unpack_from(b, o)[0]
    mi, hr, day, mo, yr = b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6]
    obj[key] = (f"{2000 + (yr & 0x7F):04d}-{mo & 0x0F:02d}-{day & 0x1F:02d}T{hr & 0x1F:02d}:"
                f"{mi & 0x3F:02d}:{ms // 1000:02d}.{ms % 1000:03d}")
    if mi & 0x80:
        obj[key + "_invalid"] = True
    if hr & 0x80:
        obj["summer_time"] = True


def _cp24(b: bytes, o: int, obj: Obj) -> None:
    """CP24Time2a (7.2.6.19): minutes and milliseconds only."""
    ms = _H.unpack_from(b, o)[0]
    mi = b[o + 2]
    obj["time"] = f"{mi & 0x3F:02d}:{ms // 1000:02d}.{ms % 1000:03d}"
    if mi & 0x80:
        obj["time_invalid"] = True


def _siq(b: bytes, o: int, obj: Obj) -> None:
    v = b[o]
    obj["value"] = v & 1
    obj["quality"] = _QUALITY[v & 0xF0]


def _diq(b: bytes, o: int, obj: Obj) -> None:
    v = b[o]
    obj["value"] = v & 3          # 0 indeterminate or intermediate, 1 off, 2 on, 3 indeterminate
    obj["quality"] = _QUALITY[v & 0xF0]


def _vti_qds(b: bytes, o: int, obj: Obj) -> None:
    v = b[o]
    obj["value"] = (v & 0x7F) - 128 if v & 0x40 else v & 0x7F   # 7-bit two's complement
    obj["transient"] = bool(v & 0x80)
    obj["quality"] = _QUALITY[b[o + 1] & 0xF1]


def _bsi_qds(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _I.unpack_from(b, o)[0]
    obj["quality"] = _QUALITY[b[o + 4] & 0xF1]


def _nva_qds(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _h.unpack_from(b, o)[0] / 32768   # normalized: -1 .. 1 - 2^-15
    obj["quality"] = _QUALITY[b[o + 2] & 0xF1]


def _sva_qds(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _h.unpack_from(b, o)[0]
    obj["quality"] = _QUALITY[b[o + 2] & 0xF1]


def _r32_qds(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _r32(b, o)
    obj["quality"] = _QUALITY[b[o + 4] & 0xF1]


def _bcr(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _i.unpack_from(b, o)[0]
    s = b[o + 4]
    obj["sequence"] = s & 0x1F
    obj["quality"] = _BCR_QUALITY[s]


def _sep(b: bytes, o: int, obj: Obj) -> None:
    v = b[o]
    obj["value"] = v & 3
    obj["quality"] = _QUALITY[v & 0xF8]
    obj["elapsed_ms"] = _H.unpack_from(b, o + 1)[0]


def _spe_qdp(b: bytes, o: int, obj: Obj) -> None:
    obj["events"] = _SPE[b[o]]
    obj["quality"] = _QUALITY[b[o + 1] & 0xF8]
    obj["duration_ms"] = _H.unpack_from(b, o + 2)[0]


def _oci_qdp(b: bytes, o: int, obj: Obj) -> None:
    obj["events"] = _OCI[b[o]]
    obj["quality"] = _QUALITY[b[o + 1] & 0xF8]
    obj["duration_ms"] = _H.unpack_from(b, o + 2)[0]


def _scd_qds(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _H.unpack_from(b, o)[0]          # 16 status bits
    obj["changes"] = _H.unpack_from(b, o + 2)[0]    # 16 change detection bits
    obj["quality"] = _QUALITY[b[o + 4] & 0xF1]


def _nva(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _h.unpack_from(b, o)[0] / 32768


def _command(mask: int) -> Parser:
    """SCO, DCO, RCO (7.2.6.15-17): state, qualifier of command, select/execute."""
    def parse(b: bytes, o: int, obj: Obj) -> None:
        v = b[o]
        obj["value"] = v & mask
        obj["qualifier"] = (v >> 2) & 0x1F
        obj["select"] = bool(v & 0x80)
    return parse


def _qos(b: bytes, o: int, obj: Obj) -> None:
    v = b[o]
    obj["qualifier"] = v & 0x7F
    obj["select"] = bool(v & 0x80)


def _setpoint(value: Parser, size: int) -> Parser:
    def parse(b: bytes, o: int, obj: Obj) -> None:
        value(b, o, obj)
        _qos(b, o + size, obj)
    return parse


def _value_only(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _h.unpack_from(b, o)[0]


def _float_only(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _r32(b, o)


def _u32(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _I.unpack_from(b, o)[0]


def _u16(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _H.unpack_from(b, o)[0]


def _coi(b: bytes, o: int, obj: Obj) -> None:
    v = b[o]
    obj["value"] = v & 0x7F       # 0 local power on, 1 local manual reset, 2 remote reset
    obj["after_parameter_change"] = bool(v & 0x80)


def _qualifier(b: bytes, o: int, obj: Obj) -> None:
    obj["qualifier"] = b[o]       # QOI (20 station, 21-36 groups), QRP, QPA


def _qcc(b: bytes, o: int, obj: Obj) -> None:
    v = b[o]
    obj["qualifier"] = v & 0x3F   # RQT: 1-4 counter groups, 5 general
    obj["freeze"] = v >> 6        # FRZ: 0 read, 1 freeze, 2 freeze and reset, 3 reset


def _qpm(b: bytes, o: int, obj: Obj) -> None:
    v = b[o]
    obj["qualifier"] = v & 0x3F
    obj["local_change"] = bool(v & 0x40)
    obj["not_in_operation"] = bool(v & 0x80)


def _parameter(value: Parser, size: int) -> Parser:
    def parse(b: bytes, o: int, obj: Obj) -> None:
        value(b, o, obj)
        _qpm(b, o + size, obj)
    return parse


def _nothing(b: bytes, o: int, obj: Obj) -> None:
    return None


def _delay(b: bytes, o: int, obj: Obj) -> None:
    obj["delay_ms"] = _H.unpack_from(b, o)[0]


def _file(*layout: tuple[str, int]) -> Parser:
    """File transfer elements (7.2.6.33-7.2.6.43), little-endian integers of 1-3 octets."""
    def parse(b: bytes, o: int, obj: Obj) -> None:
        for name, size in layout:
            if name == "time":
                cp56(b, o, obj)
            else:
                obj[name] = int.from_bytes(b[o:o + size], "little")
            o += size
    return parse


def _with_cp24(parse: Parser, size: int) -> Parser:
    def both(b: bytes, o: int, obj: Obj) -> None:
        parse(b, o, obj)
        _cp24(b, o + size, obj)
    return both


def _with_cp56(parse: Parser, size: int) -> Parser:
    def both(b: bytes, o: int, obj: Obj) -> None:
        parse(b, o, obj)
        cp56(b, o + size, obj)
    return both


def _time_only(b: bytes, o: int, obj: Obj) -> None:
    cp56(b, o, obj)


def _test_with_time(b: bytes, o: int, obj: Obj) -> None:
    obj["value"] = _H.unpack_from(b, o)[0]        # TSC test sequence counter
    cp56(b, o + 2, obj)


def _query_log(b: bytes, o: int, obj: Obj) -> None:
    obj["file"] = _H.unpack_from(b, o)[0]
    cp56(b, o + 2, obj, "start_time")
    cp56(b, o + 9, obj, "stop_time")


_SCO, _DCO = _command(1), _command(3)
_EP_TA = _with_cp24(_sep, 3)

# type id -> (information element size without the IOA, parser); None: not decoded (the
# security types' elements vary in size). F_SG_NA_1 (125) has a segment of its own length.
IEC104_ELEMENTS: dict[int, tuple[int, Parser] | None] = {
    1: (1, _siq), 2: (4, _with_cp24(_siq, 1)), 3: (1, _diq), 4: (4, _with_cp24(_diq, 1)),
    5: (2, _vti_qds), 6: (5, _with_cp24(_vti_qds, 2)), 7: (5, _bsi_qds),
    8: (8, _with_cp24(_bsi_qds, 5)), 9: (3, _nva_qds), 10: (6, _with_cp24(_nva_qds, 3)),
    11: (3, _sva_qds), 12: (6, _with_cp24(_sva_qds, 3)), 13: (5, _r32_qds),
    14: (8, _with_cp24(_r32_qds, 5)), 15: (5, _bcr), 16: (8, _with_cp24(_bcr, 5)),
    17: (6, _EP_TA), 18: (7, _with_cp24(_spe_qdp, 4)), 19: (7, _with_cp24(_oci_qdp, 4)),
    20: (5, _scd_qds), 21: (2, _nva),
    30: (8, _with_cp56(_siq, 1)), 31: (8, _with_cp56(_diq, 1)), 32: (9, _with_cp56(_vti_qds, 2)),
    33: (12, _with_cp56(_bsi_qds, 5)), 34: (10, _with_cp56(_nva_qds, 3)),
    35: (10, _with_cp56(_sva_qds, 3)), 36: (12, _with_cp56(_r32_qds, 5)),
    37: (12, _with_cp56(_bcr, 5)), 38: (10, _with_cp56(_sep, 3)),
    39: (11, _with_cp56(_spe_qdp, 4)), 40: (11, _with_cp56(_oci_qdp, 4)), 41: None,
    45: (1, _SCO), 46: (1, _DCO), 47: (1, _command(3)), 48: (3, _setpoint(_nva, 2)),
    49: (3, _setpoint(_value_only, 2)), 50: (5, _setpoint(_float_only, 4)), 51: (4, _u32),
    58: (8, _with_cp56(_SCO, 1)), 59: (8, _with_cp56(_DCO, 1)),
    60: (8, _with_cp56(_command(3), 1)), 61: (10, _with_cp56(_setpoint(_nva, 2), 3)),
    62: (10, _with_cp56(_setpoint(_value_only, 2), 3)),
    63: (12, _with_cp56(_setpoint(_float_only, 4), 5)), 64: (11, _with_cp56(_u32, 4)),
    70: (1, _coi),
    **{t: None for t in (81, 82, 83, 84, 85, 86, 87, 90, 91, 92, 93, 94, 95)},
    100: (1, _qualifier), 101: (1, _qcc), 102: (0, _nothing), 103: (7, _time_only),
    104: (2, _u16), 105: (1, _qualifier), 106: (2, _delay), 107: (9, _test_with_time),
    110: (3, _parameter(_nva, 2)), 111: (3, _parameter(_value_only, 2)),
    112: (5, _parameter(_float_only, 4)), 113: (1, _qualifier),
    120: (6, _file(("file", 2), ("length", 3), ("qualifier", 1))),
    121: (7, _file(("file", 2), ("section", 1), ("length", 3), ("qualifier", 1))),
    122: (4, _file(("file", 2), ("section", 1), ("qualifier", 1))),
    123: (5, _file(("file", 2), ("section", 1), ("qualifier", 1), ("checksum", 1))),
    124: (4, _file(("file", 2), ("section", 1), ("qualifier", 1))),
    125: (4, _file(("file", 2), ("section", 1), ("segment_length", 1))),
    126: (13, _file(("file", 2), ("length", 3), ("status", 1), ("time", 7))),
    127: (16, _query_log),
}
IEC104_SEGMENT = 125             # F_SG_NA_1: the element is followed by segment_length octets
