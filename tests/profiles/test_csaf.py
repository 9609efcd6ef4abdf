"""CSAF import: the whole shared advisory set, every advisory accounted for, reproducibly."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.profiles import csaf, schema

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "advisories"
PROFILES = ROOT / "firmware_profiles"
needs_shared = pytest.mark.skipif(not (SHARED / "csaf").is_dir(), reason="shared advisories absent")


@pytest.fixture(scope="module")
def imported() -> tuple[dict[str, str], csaf.ImportReport]:
    maps = csaf.load_mappings(PROFILES / "mappings")
    return csaf.build(csaf.read_advisories(SHARED / "csaf"), maps)


@needs_shared
def test_every_advisory_accounted_for(imported) -> None:
    files, report = imported
    with open(SHARED / "index.csv", newline="", encoding="utf-8") as fh:
        expected = {row["tracking_id"] for row in csv.DictReader(fh)}
    in_profiles: set[str] = set()
    for name, text in files.items():
        doc = schema.tomllib.loads(text)
        ids = {a["id"] for a in doc.get("advisory", [])}
        if name == schema.UNMAPPED:
            unmapped = ids
            assert all(a["reason"] for a in doc["advisory"])
        else:
            in_profiles |= ids
    assert not in_profiles & unmapped
    assert in_profiles | unmapped == expected
    assert len(expected) == 1512
    print("\n" + report.render())
    per = report.per_vendor()
    assert per["Siemens"]["seen"] == 702 and per["Siemens"]["mapped"] > 50
    assert per["Rockwell Automation"]["mapped"] > 30
    assert per["Schneider Electric"]["mapped"] > 10


@needs_shared
def test_reproducible_and_shipped_is_current(imported, tmp_path: Path) -> None:
    files, _ = imported
    again, _ = csaf.build(csaf.read_advisories(SHARED / "csaf"),
                          csaf.load_mappings(PROFILES / "mappings"))
    assert again == files
    csaf.write(files, tmp_path / "a")
    csaf.write(again, tmp_path / "b")
    for p in sorted((tmp_path / "a").glob("*.toml")):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
    # The shipped profiles are exactly what the import makes: nobody edited them by hand.
    for name, text in files.items():
        assert (PROFILES / name).read_text(encoding="utf-8") == text, name


@needs_shared
def test_cli_import_and_validate(tmp_path: Path) -> None:
    out = tmp_path / "profiles"
    run = subprocess.run([sys.executable, "-m", "edge_agent", "profiles", "import",
                          str(SHARED / "csaf"), "--out", str(out), "--mappings",
                          str(PROFILES / "mappings")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "Siemens" in run.stdout and "total (advisories)" in run.stdout
    val = subprocess.run([sys.executable, "-m", "edge_agent", "profiles", "validate", str(out)],
                         capture_output=True, text=True)
    assert val.returncode == 0, val.stderr


def test_validate_names_file_and_key(tmp_path: Path) -> None:
    good = (PROFILES / "siemens-s7-300.toml").read_text(encoding="utf-8")
    (tmp_path / "siemens-s7-300.toml").write_text(
        good.replace('programming_in_production = false', 'programming_in_production = "no"'),
        encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "edge_agent", "profiles", "validate",
                          str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1
    assert "siemens-s7-300.toml" in run.stderr
    assert "expected.programming_in_production" in run.stderr


def test_schema_errors_name_keys() -> None:
    doc = schema.tomllib.loads((PROFILES / "siemens-s7-300.toml").read_text(encoding="utf-8"))
    doc["advisory"][0]["affected"] = [{"lt": "not a version"}]
    doc["advisory"][1]["id"] = "CVE-2020-1234"
    doc["identity"]["s7"]["colour"] = "red"
    doc["expected"]["functions"].append("teleport")
    keys = {e.key for e in schema.check_profile(doc, "x.toml", "siemens-s7-300")}
    assert {"advisory[0].affected[0].lt", "advisory[1].id", "identity.s7.colour",
            "expected.functions"} <= keys


def test_readme_documents_every_key() -> None:
    text = (PROFILES / "README.md").read_text(encoding="utf-8")
    for key in (*schema.PROFILE_KEYS, *schema.EXPECTED_KEYS, *schema.ADVISORY_KEYS):
        assert f"`{key}`" in text or f"[{key}" in text or f"[[{key}" in text, key
    for proto, keys in schema.MATCHERS.items():
        assert f"`{proto}`" in text
        for k in keys:
            assert f"`{k}`" in text, (proto, k)


@pytest.mark.parametrize("text,category,want", [
    ("vers:all/*", "product_version_range", ["all"]),
    ("All versions", "product_version_range", ["all"]),
    ("vers:all/<V4.5.0", "product_version_range", [{"lt": "V4.5.0"}]),
    ("vers:all/>=V7.80<V9.40", "product_version_range", [{"ge": "V7.80", "lt": "V9.40"}]),
    ("vers:intdot/<3.3.17", "product_version_range", [{"lt": "3.3.17"}]),
    ("All versions < V4.5", "product_version_range", [{"lt": "V4.5"}]),
    ("<= 11.001", "product_version_range", [{"le": "11.001"}]),
    (">= 1.0 | <= 1.32", "product_version_range", [{"ge": "1.0", "le": "1.32"}]),
    ("1.1 | 1.2.3 | 2.0", "product_version_range", [{"eq": "1.1"}, {"eq": "1.2.3"}, {"eq": "2.0"}]),
    ("28  - 32", "product_version", [{"ge": "28", "le": "32.x"}]),
    ("1.012", "product_version", [{"le": "1.012"}]),
    ("All versions with Function State (FS) < 11", "product_version_range",
     [{"text": "All versions with Function State (FS) < 11"}]),
    ("No version", "product_version", [{"text": "No version"}]),
    (" <2.420.HW01", "product_version_range", [{"lt": "2.420.HW01"}]),
])
def test_parse_range(text: str, category: str, want: list) -> None:
    assert csaf.parse_range(text, category) == want


def test_release_lines() -> None:
    got = csaf.release_lines([{"lt": "V4.10.111"}, {"lt": "V5.00.171"}, {"lt": "V5.10.069"},
                              {"lt": "V6.00.204"}])
    assert got == [{"lt": "V4.10.111"}, {"ge": "V5.0", "lt": "V5.00.171"},
                   {"ge": "V5.10", "lt": "V5.10.069"}, {"ge": "V6.0", "lt": "V6.00.204"}]
    # Two fixes in one line are not release lines: left alone.
    assert csaf.release_lines([{"lt": "V2.0"}, {"lt": "V2.5"}]) == [{"lt": "V2.0"}, {"lt": "V2.5"}]


def _doc(leaves: list[dict], vulns: list[dict]) -> dict:
    return {"document": {"tracking": {"id": "ICSA-99-001-01"}, "title": "Test advisory"},
            "product_tree": {"branches": [{"category": "vendor", "name": "Siemens",
                                           "branches": leaves}]},
            "vulnerabilities": vulns}


def test_synthetic_advisory_models_and_fix() -> None:
    maps = csaf.load_mappings(PROFILES / "mappings")
    leaves = [{"category": "product_name", "name": "SIMATIC S7-1200 CPU 1211C (6ES7211-1BE40-0XB0)",
               "branches": [{"category": "product_version_range", "name": "vers:all/<V4.6.1",
                             "product": {"name": "x", "product_id": "P1"}}]},
              {"category": "product_name", "name": "SIMATIC WinCC",
               "branches": [{"category": "product_version_range", "name": "vers:all/*",
                             "product": {"name": "y", "product_id": "P2"}}]}]
    vulns = [{"cve": "CVE-2099-0001", "product_status": {"known_affected": ["P1", "P2"]},
              "scores": [{"cvss_v3": {"baseScore": 9.8}, "products": ["P1"]}],
              "remediations": [{"category": "vendor_fix", "details": "Update to V4.6.1 or later "
                                "version", "product_ids": ["P1"]}]}]
    r = csaf.import_advisory(_doc(leaves, vulns), maps)
    assert [e.family for e in r.entries] == ["siemens-s7-1200"]
    adv = r.entries[0].adv
    assert adv["models"] == ["6ES7211-1BE40-0XB0"]
    assert adv["affected"] == [{"lt": "V4.6.1"}] and adv["fixed"] == "V4.6.1"
    assert adv["cvss_base"] == 9.8 and adv["cves"] == ["CVE-2099-0001"]
    only_software = csaf.import_advisory(_doc(leaves[1:], vulns), maps)
    assert not only_software.entries and "software" in only_software.reason


def test_generic_csaf_full_product_names_and_relationships() -> None:
    doc = {"document": {"tracking": {"id": "ICSA-99-002-01"}, "title": "t"},
           "product_tree": {"full_product_names": [
               {"name": "SIMATIC S7-300 CPU 315-2 PN/DP (6ES7315-2EH14-0AB0) V3.2",
                "product_id": "F1"}],
               "relationships": [{"category": "installed_on", "product_reference": "F1",
                                  "relates_to_product_reference": "F1",
                                  "full_product_name": {"name": "z", "product_id": "R1"}}]},
           "vulnerabilities": [{"cve": "CVE-2099-0002",
                                "product_status": {"known_affected": ["R1"]}}]}
    r = csaf.import_advisory(doc, csaf.load_mappings(PROFILES / "mappings"))
    assert [e.family for e in r.entries] == ["siemens-s7-300"]
    assert r.entries[0].adv["affected"] == ["all"]
