"""Firmware profiles in the running pipeline: findings, asset attributes, noise controls."""
from __future__ import annotations

from edge_agent import cli
from edge_agent.summary.sign import claims
from edge_agent.transport.spool import Spool
from tests.conftest import fixture_pcaps


def snap7() -> str:
    (path,) = [p for p in fixture_pcaps("s7comm") if p.name == "snap7.pcap"]
    return str(path)


def test_vulnerable_plc_is_a_finding_and_an_asset_attribute(tmp_path, capsys) -> None:
    assert cli.main(["run", "-q", "--pcap", snap7(), "--state-dir", str(tmp_path)]) == 0
    docs = [claims(d) for _, d in Spool(tmp_path / "spool.sqlite").documents()]
    vuln = [f for d in docs for f in d["findings"] if f["rule"] == "vulnerable_firmware"]
    assert len(vuln) == 1 and vuln[0]["dest_ip"] == "134.217.61.211"
    assert vuln[0]["attack_technique"] == "T0866" and vuln[0]["severity"] == "high"   # CVSS 7.5
    assert "ICSA-20-042-05" in {e["advisory"] for e in vuln[0]["explanation"]}
    plc = [a["asset"] for d in docs for a in d["assets"] if a["asset"]["ip"] == "134.217.61.211"]
    assert plc[-1]["firmware_status"] == "vulnerable" and plc[-1]["profile"] == "siemens-s7-300"
    assert cli.main(["assets", "--vulnerable", "--state-dir", str(tmp_path)]) == 0
    assert "siemens-s7-300" in capsys.readouterr().out


def test_profile_rules_obey_the_configuration(tmp_path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[detect]\ndisabled = ["vulnerable_firmware"]\n')
    assert cli.main(["run", "-q", "--pcap", snap7(), "--state-dir", str(tmp_path),
                     "--config", str(cfg)]) == 0
    docs = [claims(d) for _, d in Spool(tmp_path / "spool.sqlite").documents()]
    assert not [f for d in docs for f in d["findings"] if f["rule"] == "vulnerable_firmware"]
