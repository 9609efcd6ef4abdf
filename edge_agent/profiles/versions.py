"""Vendor firmware version strings: parse, compare, test against ranges.

What the wire and the advisories write for one and the same firmware differs by vendor:

- Siemens: ``V3.2.7`` (S7 SZL), ``V4.5.2``, ``V2.9 SP1``, ``V3.X.16`` (``X``: every minor line)
- Rockwell: ``20.054`` in advisories, ``20.54`` on the wire (major.minor bytes of the CIP
  Identity revision), so components compare as integers and ``054 == 54``
- Schneider: ``SV3.51``; ABB/Hitachi: ``1.2.3.18``; Moxa: ``1.4 build 11051315``;
  others: ``R10.0.0``, ``FW 2.1``, ``Firmware Version 2.00``, ``V5.x``

A version is its numeric components plus an optional service pack, a hotfix or build number and
a letter suffix. Anything that is not recognisably a version parses to ``None``, and
:func:`compare` then answers ``None``: callers must report *unknown*, never *safe*.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

# Prefixes vendors put before the number: "V", "SV" (Schneider), "R" (release), "FW",
# "Firmware", "Version", "Rev", "Revision".
_PREFIX = re.compile(r"^(?:firmware\s*(?:version)?|fw|version|ver|rev(?:ision)?|sv|v|r)\s*[:.=]?\s*"
                     r"(?=[\dxX*vV])", re.IGNORECASE)
_CORE = re.compile(r"^(\d+)((?:\.(?:\d+|[xX*]))*)([a-zA-Z]?)(?![\d])")
_SP = re.compile(r"^[\s_-]*(?:sp|service\s*pack)\s*(\d+)", re.IGNORECASE)
_HOTFIX = re.compile(r"^[\s_-]*(?:hf|hotfix|upd(?:ate)?|u)\s*(\d+)", re.IGNORECASE)
_BUILD = re.compile(r"^[\s_+-]*\(?(?:build|b)\s*[:.]?\s*(\d+)\)?", re.IGNORECASE)
_TRAILER = re.compile(r"^[\s,;)]*(?:\(.*\))?\s*$")
WILDCARD = -1        # "x"/"X"/"*" component: matches whatever the compared version has there


@dataclass(frozen=True)
class Version:
    """A parsed version; ``text`` keeps the vendor's spelling for display."""

    parts: tuple[int, ...]
    sp: int = 0
    hotfix: int = 0
    build: int = 0
    letter: str = ""
    text: str = ""

    @property
    def has_wildcard(self) -> bool:
        return WILDCARD in self.parts

    def key(self, width: int) -> tuple[Any, ...]:
        """Sort key with ``parts`` padded to ``width`` components."""
        parts = self.parts + (0,) * (width - len(self.parts))
        return (parts, self.letter, self.sp, self.hotfix, self.build)

    def __str__(self) -> str:
        return self.text or ".".join(str(p) for p in self.parts)


VersionLike = Union[str, Version, None]


@lru_cache(maxsize=8192)
def parse(text: str | None) -> Version | None:
    """A :class:`Version`, or ``None`` when ``text`` is not recognisably a version."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        return None
    raw = text.strip()
    s = raw.replace("\u00a0", " ")
    if not s:
        return None
    # "V2.9 SP1" and friends; a bare "SP1" is a service pack of an unnamed release.
    m = re.fullmatch(r"(?:sp|service\s*pack)\s*(\d+)", s, re.IGNORECASE)
    if m:
        return Version((), sp=int(m.group(1)), text=raw)
    for _ in range(2):                # "FW=V4.00.060": a label, then the V
        s = _PREFIX.sub("", s, count=1)
    m = _CORE.match(s)
    if m is None:
        return None
    parts = tuple(WILDCARD if p in "xX*" else int(p)
                  for p in (m.group(1) + m.group(2)).split("."))
    letter = m.group(3).lower()
    rest = s[m.end():]
    sp = hotfix = build = 0
    if letter in ("x",):          # "5.x": the x was a wildcard component written without a dot
        parts, letter = parts + (WILDCARD,), ""
    for _ in range(3):
        for rx, name in ((_SP, "sp"), (_HOTFIX, "hotfix"), (_BUILD, "build")):
            mm = rx.match(rest)
            if mm:
                if name == "sp":
                    sp = int(mm.group(1))
                elif name == "hotfix":
                    hotfix = int(mm.group(1))
                else:
                    build = int(mm.group(1))
                rest = rest[mm.end():]
    if rest and not _TRAILER.match(rest):
        # A suffix we do not understand: "-rc1", ".HW01", "/ SBC=...". Keep the numbers when
        # the suffix is separated from them, else the whole string is not a version.
        if not re.match(r"^[\s/_+-]", rest) and not re.match(r"^\.[A-Za-z]", rest):
            return None
    return Version(parts, sp, hotfix, build, letter, raw)


def _as_version(v: VersionLike) -> Version | None:
    return v if isinstance(v, Version) else parse(v)


def compare(a: VersionLike, b: VersionLike) -> int | None:
    """-1, 0 or 1 as ``a`` is below, equal to or above ``b``; ``None`` when either does not parse.

    Wildcard components (``V3.X.16``) take the other side's value, so ``V3.2.7`` is below
    ``V3.X.16`` (the 3.2 line is fixed in 3.2.16) and ``V5.3`` equals ``V5.x``.
    """
    va, vb = _as_version(a), _as_version(b)
    if va is None or vb is None:
        return None
    if not va.parts and not vb.parts:
        return (va.sp > vb.sp) - (va.sp < vb.sp)
    if not va.parts or not vb.parts:
        return None                   # "SP1" against "V2.9": not comparable
    pa, pb = list(va.parts), list(vb.parts)
    width = max(len(pa), len(pb))
    pa += [0] * (width - len(pa))
    pb += [0] * (width - len(pb))
    wild = False
    for i in range(width):
        if pa[i] == WILDCARD and pb[i] == WILDCARD:
            pa[i] = pb[i] = 0
            wild = True
        elif pa[i] == WILDCARD:
            pa[i] = pb[i]
            wild = True
        elif pb[i] == WILDCARD:
            pb[i] = pa[i]
            wild = True
    if wild and (len(va.parts) != len(vb.parts)) and (
            va.parts[-1] == WILDCARD or vb.parts[-1] == WILDCARD):
        # "V5.x" covers every 5.* however long: compare only the components it names.
        n = min(len(va.parts), len(vb.parts))
        pa, pb = pa[:n], pb[:n]
        if pa == pb:
            return 0
    ka = (tuple(pa), va.letter, va.sp, va.hotfix, va.build)
    kb = (tuple(pb), vb.letter, vb.sp, vb.hotfix, vb.build)
    if wild and pa == pb:
        return 0 if (va.sp, va.hotfix, va.build) == (vb.sp, vb.hotfix, vb.build) else \
            (1 if ka > kb else -1)
    return (ka > kb) - (ka < kb)


# -- ranges ---------------------------------------------------------------------------------

RANGE_OPS = ("eq", "ge", "gt", "le", "lt")
Range = Union[str, dict]        # "all", or {"ge": ..., "lt": ...} / {"eq": ...} / {"text": ...}


def in_range(version: VersionLike, rng: Range) -> bool | None:
    """Whether ``version`` lies in ``rng``; ``None`` when that cannot be told."""
    if rng == "all":
        return True if _as_version(version) is not None else None
    if not isinstance(rng, dict) or "text" in rng or not any(k in rng for k in RANGE_OPS):
        return None
    result = True
    for op in RANGE_OPS:
        if op not in rng:
            continue
        c = compare(version, rng[op])
        if c is None:
            return None
        ok = {"eq": c == 0, "ge": c >= 0, "gt": c > 0, "le": c <= 0, "lt": c < 0}[op]
        result = result and ok
    return result


def in_any(version: VersionLike, ranges: list[Range]) -> bool | None:
    """True when in one of ``ranges``; None when it is in none for sure but some were unknown."""
    unknown = False
    for rng in ranges:
        r = in_range(version, rng)
        if r:
            return True
        if r is None:
            unknown = True
    return None if unknown else False


def range_text(rng: Range) -> str:
    """``>= V1.0, < V2.0``: a range for people."""
    if rng == "all":
        return "all versions"
    if not isinstance(rng, dict):
        return str(rng)
    if "text" in rng:
        return str(rng["text"])
    sym = {"eq": "=", "ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return ", ".join(f"{sym[op]} {rng[op]}" for op in RANGE_OPS if op in rng)


def is_downgrade(old: VersionLike, new: VersionLike) -> bool | None:
    """True when ``new`` is below ``old`` (None when either does not parse)."""
    c = compare(new, old)
    return None if c is None else c < 0
