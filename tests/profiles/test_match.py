"""Matching identities from the fixture captures and ICSNPP baselines to the right advisories."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.profiles.assess import ProfileAssessor, severity_of
from edge_agent.profiles.match import (
    Profile,
    ProfileSet,
    expected,
    identities_by_proto,
    model_matches,
    programming_in_production,
)

ROOT = Path(__file__).resolve().parents[2]
PCAPS = ROOT.parent / "shared" / "fixtures" / "pcaps"

# Identities as the decoders report them (edge-agent assets --json on the fixture captures).
SNAP7 = {"device_type": "plc", "firmware": "V3.2.7", "hardware": "3", "name": "PLC_1",
         "order_number": "6ES7 315-2EH14-0AB0", "product": "CPU 315-2 PN/DP",
         "serial": "S C-B1U393142011", "vendor": "Siemens", "vendor_id": 42}
S7IDENT = {**SNAP7, "firmware": "V3.2.6", "hardware": "4", "serial": "S C-C2UR28922012"}
ENBT = {"device_type": "communications_adapter", "firmware": "4.3", "product": "1756-ENBT/A",
        "product_code": 58, "serial": "0x00524d8e",
        "vendor": "Rockwell Automation/Allen-Bradley", "vendor_id": 1}
# EIP-RebootorRestart.pcap: Get_Attributes_All of the Identity object routed to slot 0.
L61 = {"vendor_id": 1, "vendor": "Rockwell Automation/Allen-Bradley",
       "device_type": "programmable_logic_controller", "product_code": 54, "firmware": "16.20",
       "product": "1756-L61/B LOGIX5561", "serial": "0x0051823f"}
ZEEK_MODBUS = {"firmware": "1.2.3.6", "product_code": "Protocol Parsing is fun!",
               "vendor": "Zeek Modbus Test"}


@pytest.fixture(scope="module")
def ps() -> ProfileSet:
    return ProfileSet.load(ROOT / "firmware_profiles")


def _one(ps: ProfileSet, ident: dict, proto: str):
    matches = ps.match(ident, proto)
    assert len(matches) == 1, [m.profile for m in matches]
    return matches[0]


def test_s7_300_cpu_315_v327(ps: ProfileSet) -> None:
    m = _one(ps, SNAP7, "s7comm")
    assert m.profile == "siemens-s7-300" and m.status == "vulnerable"
    st = {a.id: a.status for a in m.advisories}
    # Fixed in V3.2.16/V3.2.17/V3.2.19 for the 315-2 PN/DP line: V3.2.7 is below all of them.
    for adv in ("ICSA-18-079-02", "ICSA-19-099-06", "ICSA-19-283-01", "ICSA-19-283-02",
                "ICSA-22-104-06", "ICSA-22-314-02", "ICSA-23-222-09",
                "ICSA-17-129-02", "ICSA-17-339-01", "ICSA-20-105-08"):
        assert st[adv] == "vulnerable", adv
    assert m.cvss_max == 7.5 and m.fixed == "V3.2.19"


def test_s7_300_at_and_above_fixed(ps: ProfileSet) -> None:
    at = _one(ps, {**SNAP7, "firmware": "V3.2.19"}, "s7comm")
    st = {a.id: a.status for a in at.advisories}
    assert st["ICSA-23-222-09"] == "fixed" and st["ICSA-19-283-01"] == "fixed"
    assert st["ICSA-17-339-01"] == "not_affected"         # < V3.X.16 in the 3.2 line
    # "All versions, no fix planned" advisories still apply.
    assert st["ICSA-20-105-08"] == "vulnerable" and at.status == "vulnerable"
    assert "ICSA-23-222-09" not in at.advisory_ids
    above = _one(ps, {**SNAP7, "firmware": "V3.2.20"}, "s7comm")
    assert {a.id: a.status for a in above.advisories}["ICSA-23-222-09"] == "fixed"
    below = _one(ps, {**SNAP7, "firmware": "V3.2.18"}, "s7comm")
    assert {a.id: a.status for a in below.advisories}["ICSA-23-222-09"] == "vulnerable"


def test_other_s7_300_models_not_narrowed_wrongly(ps: ProfileSet) -> None:
    # 314C-2 PN/DP has its own fix line (V3.3.x): narrowed entries use its order number.
    m = _one(ps, {**SNAP7, "order_number": "6ES7 314-6EH04-0AB0", "firmware": "V3.3.16"},
             "s7comm")
    st = {a.id: a.status for a in m.advisories}
    assert st["ICSA-19-283-01"] == "vulnerable"           # < V3.3.17
    assert st["ICSA-19-099-06"] == "fixed"                # < V3.3.16


def test_s7ident_v326_and_unknown_firmware(ps: ProfileSet) -> None:
    assert _one(ps, S7IDENT, "s7comm").status == "vulnerable"
    for fw in (None, "", "garbage"):
        ident = {k: v for k, v in SNAP7.items() if k != "firmware"}
        if fw is not None:
            ident["firmware"] = fw
        m = _one(ps, ident, "s7comm")
        assert m.status == "unknown"                       # never "safe"
        assert {a.status for a in m.advisories} == {"unknown"}


def test_rockwell_1756_enbt(ps: ProfileSet) -> None:
    m = _one(ps, ENBT, "enip")
    assert m.profile == "rockwell-1756-enbt" and m.status == "vulnerable"
    assert m.advisory_ids == ("ICSA-18-310-02",)
    assert m.cvss_max == 8.6


def test_rockwell_1756_l61(ps: ProfileSet) -> None:
    m = _one(ps, L61, "cip")
    assert m.profile == "rockwell-controllogix-5560" and m.status == "vulnerable"
    # ICSA-22-090-05 (CVE-2022-1161) names ControlLogix 5560 controllers, all versions.
    # ICSA-21-056-03 (CVE-2021-22681) lists only the engineering software as products in its
    # CSAF product tree, so it is not matched to the controller.
    assert m.advisory_ids == ("ICSA-22-090-05",)
    assert m.cves == ("CVE-2022-1161",)
    assert severity_of(m.cvss_max) == "critical"


def test_partial_identity_never_matches(ps: ProfileSet) -> None:
    # vendor id 1 alone, or the right name with another vendor id: no profile.
    assert ps.match({"vendor_id": 1, "firmware": "4.3"}, "enip") == []
    assert ps.match({**ENBT, "vendor_id": 2}, "enip") == []
    assert ps.match({**ENBT, "product_code": 59}, "enip") == []      # ENBT also needs code 58
    assert ps.match({k: v for k, v in ENBT.items() if k != "product_code"}, "enip") == []
    # An S7 order number arriving as a Modbus identity is not an S7 identity.
    assert ps.match(SNAP7, "modbus") == []
    assert ps.match(ZEEK_MODBUS, "modbus") == []
    assert ps.match({"order_number": "6ES7 999-9XX99-0AB0", "firmware": "V1.0"}, "s7comm") == []


def test_catalogue_boundaries() -> None:
    assert model_matches("1756-EN2T/D", "1756-EN2T")
    assert model_matches("1756-EN2T/D", "1756-EN2T/D")
    assert not model_matches("1756-EN2TR/C", "1756-EN2T")
    assert not model_matches("1756-EN2T/C", "1756-EN2T/D")
    assert model_matches("6ES7 315-2EH14-0AB0", "6ES7315-2EH14-0AB0")
    assert model_matches("6ES7 315-2EH14-0AB0", "6ES731*")
    assert not model_matches("6ES7 215-1AG40-0XB0", "6ES731*")


def test_en2t_series_narrowing(ps: ProfileSet) -> None:
    base = {"vendor_id": 1, "device_type": "communications_adapter", "product_code": 166}
    d = _one(ps, {**base, "product": "1756-EN2T/D", "firmware": "11.1"}, "enip")
    assert d.profile == "rockwell-1756-en2t"
    st = {a.id: a.status for a in d.advisories}
    assert st["ICSA-23-026-06"] == "vulnerable" and st["ICSA-23-193-01"] == "vulnerable"
    assert d.fixed == "11.004"
    fixed = _one(ps, {**base, "product": "1756-EN2T/D", "firmware": "12.1"}, "enip")
    assert "ICSA-23-026-06" not in fixed.advisory_ids


def test_expected_behaviour(ps: ProfileSet) -> None:
    p = ps.get("siemens-s7-300")
    assert isinstance(p, Profile)
    assert expected(p, "s7comm", "read") and expected(p, "s7comm", "write")
    assert expected(p, "cotp", "session")
    assert not expected(p, "s7comm", "program_download")
    assert not expected(p, "modbus", "read")             # an S7-300 serves no Modbus
    assert not programming_in_production(p)


def test_identities_by_proto_from_inventory(ps: ProfileSet) -> None:
    asset = {"key": "ip:10.0.0.5", "ip": "10.0.0.5", "identity": {**SNAP7, "product_code": "0x0101"},
             "learned_from": {**{k: "s7comm read_szl @1.0" for k in SNAP7},
                              "product_code": "profinet_dcp identify @2.0",
                              "vendor_id": "profinet_dcp identify @2.0"}}
    split = identities_by_proto(asset)
    assert split["profinet"] == {"product_code": "0x0101", "vendor_id": 42}
    assert "vendor_id" not in split["s7"] and split["s7"]["firmware"] == "V3.2.7"
    assert [m.profile for m in ps.match_asset(asset)] == ["siemens-s7-300"]


def test_assessor_findings(ps: ProfileSet) -> None:
    a = ProfileAssessor(ps)
    asset = {"key": "ip:134.217.61.211", "ip": "134.217.61.211", "identity": SNAP7,
             "learned_from": {k: "s7comm read_szl @1.0" for k in SNAP7}, "last_seen": 10.0}
    found = a.on_identity(asset, ())
    assert [f["rule"] for f in found] == ["vulnerable_firmware"]
    f = found[0]
    assert f["severity"] == "high" and f["technique"] == "T0866"
    assert f["dest_ip"] == "134.217.61.211" and "ICSA-19-283-01" in f["detail"]
    assert a.on_identity(asset, ()) == []                 # reported once
    attrs = a.attributes(asset)
    assert attrs["profile"] == "siemens-s7-300" and attrs["firmware_status"] == "vulnerable"
    assert any(v["advisory"] == "ICSA-22-104-06" for v in attrs["vulnerabilities"])
    # A downgrade is high, and reports the (now different) vulnerable firmware again.
    down = {**asset, "identity": {**SNAP7, "firmware": "V3.2.6"}}
    found = a.on_identity(down, [{"attr": "firmware", "old": "V3.2.7", "new": "V3.2.6"}])
    rules = {f["rule"]: f for f in found}
    assert rules["firmware_changed"]["severity"] == "high"
    assert rules["firmware_changed"]["technique"] == "T0857"
    assert "vulnerable_firmware" in rules
    up = a.on_identity({**asset, "identity": {**SNAP7, "firmware": "V3.2.19"}},
                       [{"attr": "firmware", "old": "V3.2.6", "new": "V3.2.19"}])
    assert {f["rule"]: f["severity"] for f in up}["firmware_changed"] == "medium"
    # Per message: programming an S7-300 in production, Modbus to it, and normal reads.
    prog = a.on_message("134.217.61.211", "10.0.0.9", "s7comm", "program_download",
                        "request_download", 11.0)
    assert prog and prog["rule"] == "unexpected_function" and prog["severity"] == "high"
    assert prog["technique"] == "T0843"
    other = a.on_message("134.217.61.211", "10.0.0.9", "modbus", "read", "read_coils", 11.0)
    assert other and "does not serve modbus" in other["detail"]
    assert a.on_message("134.217.61.211", "10.0.0.9", "s7comm", "read", "read_var", 11.0) is None
    assert a.on_message("10.9.9.9", "10.0.0.9", "s7comm", "program_download", "x", 11.0) is None
    from edge_agent.detect.rules import Finding
    Finding(**prog)                                      # the dicts are detector findings


def test_severity_from_cvss() -> None:
    assert [severity_of(s) for s in (9.8, 9.0, 7.5, 7.0, 5.3, 4.0, 3.9, None)] == [
        "critical", "critical", "high", "high", "medium", "medium", "low", "medium"]


@pytest.mark.skipif(not (PCAPS / "s7comm" / "snap7.pcap").exists(), reason="fixtures absent")
def test_fixture_capture_end_to_end(ps: ProfileSet, tmp_path: Path) -> None:
    """The inventory the agent builds from a real capture matches the S7-300 profile."""
    from edge_agent.cli import main
    from edge_agent.tools.profiles import list_vulnerable
    from edge_agent.transport.assets import AssetStore
    state = tmp_path / "state"
    assert main(["run", "--pcap", str(PCAPS / "s7comm" / "snap7.pcap"), "--state-dir",
                 str(state), "-q"]) == 0
    assets = [a.as_dict() for a in AssetStore(state / "assets.sqlite").load()]
    text = list_vulnerable(assets, ps)
    assert "134.217.61.211" in text and "siemens-s7-300" in text and "V3.2.19" in text
    assert "1 vulnerable device(s)" in text
