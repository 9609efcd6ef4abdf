"""Vendor version strings: parsing, comparison, ranges; None means unknown, never safe."""
from __future__ import annotations

import pytest

from edge_agent.profiles.versions import compare, in_any, in_range, is_downgrade, parse


@pytest.mark.parametrize("text,parts", [
    ("V4.5.2", (4, 5, 2)), ("4.5", (4, 5)), ("20.054", (20, 54)), ("V3.2.7", (3, 2, 7)),
    ("1.2.3.6", (1, 2, 3, 6)), ("R10.0.0", (10, 0, 0)), ("FW 2.1", (2, 1)),
    ("SV3.51", (3, 51)), ("Firmware Version 2.00", (2, 0)), ("FW=V4.00.060 / SBC=1", (4, 0, 60)),
    ("1.4 build 11051315 ", (1, 4)), ("2.420.HW01", (2, 420)), ("Rev 4.3", (4, 3)),
    ("V4.5.2+build123", (4, 5, 2)), ("V2.9 SP1", (2, 9)),
])
def test_parse(text: str, parts: tuple[int, ...]) -> None:
    v = parse(text)
    assert v is not None and v.parts == parts


@pytest.mark.parametrize("text", ["", "All versions", "No version", "x", "n/a",
                                  "<=the_first_5_digits_of_serial_number_24031", None, "BBBBBBBB"])
def test_unparseable(text: str | None) -> None:
    assert parse(text) is None


@pytest.mark.parametrize("a,b,want", [
    ("V3.2.7", "V3.2.17", -1), ("V3.2.17", "V3.2.17", 0), ("V3.2.18", "V3.2.17", 1),
    ("4.5", "V4.5.0", 0),                       # padding
    ("20.54", "20.054", 0), ("11.1", "11.001", 0), ("16.20", "20.011", -1),   # Rockwell
    ("V2.9 SP1", "V2.9", 1), ("V2.9 SP1", "V2.9 SP2", -1), ("V3.0", "V2.9 SP3", 1),
    ("SP1", "SP2", -1),
    ("1.4 build 11051315", "1.4 build 11051316", -1),
    ("V3.2.7", "V3.X.16", -1), ("V3.3.16", "V3.X.16", 0), ("V3.3.17", "V3.X.16", 1),
    ("V5.3", "V5.x", 0), ("V6.1", "V5.x", 1), ("V4.9", "V5.x", -1), ("32.11", "32.x", 0),
    ("V1.2a", "V1.2", 1), ("SV3.51", "V3.6", 1), ("R10.0.0", "9.9", 1),
])
def test_compare(a: str, b: str, want: int) -> None:
    assert compare(a, b) == want
    assert compare(b, a) == -want


@pytest.mark.parametrize("a,b", [("SP1", "V2.9"), ("V2.9", "garbage"), ("No version", "V1"),
                                 (None, "V1.0")])
def test_not_comparable(a: str | None, b: str) -> None:
    assert compare(a, b) is None


def test_ranges_edges() -> None:
    rng = {"lt": "V3.3.17"}
    assert in_range("V3.3.16", rng) is True          # below the fix
    assert in_range("V3.3.17", rng) is False         # equal to the fix
    assert in_range("V3.3.18", rng) is False         # above
    assert in_range("garbage", rng) is None          # unknown, never "not affected"
    assert in_range("V4.5.1", {"ge": "V4.5.0", "lt": "V4.5.2"}) is True
    assert in_range("V4.5.2", {"ge": "V4.5.0", "lt": "V4.5.2"}) is False
    assert in_range("V4.4.9", {"ge": "V4.5.0", "lt": "V4.5.2"}) is False
    assert in_range("1.012", {"eq": "1.012"}) is True
    assert in_range("V1.0", "all") is True
    assert in_range(None, "all") is None
    assert in_range("V1.0", {"text": "All versions with FS < 11"}) is None
    assert in_range("32.11", {"ge": "28", "le": "32.x"}) is True
    assert in_range("33.1", {"ge": "28", "le": "32.x"}) is False
    assert in_any("V5.00.171", [{"lt": "V4.10.111"}, {"ge": "V5.00", "lt": "V5.00.171"},
                                {"ge": "V6.00", "lt": "V6.00.204"}]) is False
    assert in_any("V6.00.100", [{"lt": "V4.10.111"}, {"ge": "V6.00", "lt": "V6.00.204"}]) is True
    assert in_any("V1", [{"text": "?"}, {"lt": "V0.5"}]) is None


def test_downgrade() -> None:
    assert is_downgrade("V3.2.17", "V3.2.7") is True
    assert is_downgrade("V3.2.7", "V3.2.17") is False
    assert is_downgrade("V3.2.7", "junk") is None
