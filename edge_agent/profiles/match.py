"""Matching a device identity against the firmware profiles, at the edge and offline.

A profile matches an identity only when *every* key of its matcher for the protocol that
produced the identity agrees (a profile naming vendor id and product pattern never matches on
the vendor id alone). The firmware then decides each advisory's status:

- ``vulnerable``   in an affected range (and below the fixed version, where one is given)
- ``fixed``        at or above the fixed version
- ``not_affected`` outside every affected range
- ``unknown``      no firmware, or one that cannot be compared with the ranges: never "safe"
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
import sys
from pathlib import Path
from typing import Any

from edge_agent.profiles import schema, versions

STATUS_RANK = {"vulnerable": 3, "unknown": 2, "fixed": 1, "not_affected": 0}
def _shipped_dir() -> Path:
    """The checkout's firmware_profiles/ or, installed, <prefix>/share/edge-agent's."""
    checkout = Path(__file__).resolve().parent.parent.parent / "firmware_profiles"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "edge-agent" / "firmware_profiles"


SHIPPED_DIR = _shipped_dir()
STATE_SUBDIR = "firmware_profiles"


class ProfileError(Exception):
    """A profile set that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Advisory:
    id: str
    title: str
    url: str
    cves: tuple[str, ...]
    cvss_base: float | None
    affected: tuple[Any, ...]
    fixed: str | None
    remediation: str | None
    models: tuple[str, ...]
    products: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Advisory:
        return cls(d["id"], d["title"], d["url"], tuple(d.get("cves", ())), d.get("cvss_base"),
                   tuple(d["affected"]), d.get("fixed"), d.get("remediation"),
                   tuple(d.get("models", ())), tuple(d.get("products", ())))


@dataclass(frozen=True)
class Expected:
    protocols: frozenset[str]
    ports: frozenset[str]
    functions: frozenset[str]
    programming_in_production: bool


@dataclass(frozen=True)
class Profile:
    id: str
    vendor: str
    family: str
    covers: tuple[Any, ...]
    identity: dict[str, dict[str, Any]]
    expected: Expected
    advisories: tuple[Advisory, ...]
    path: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str = "") -> Profile:
        e = d["expected"]
        return cls(d["id"], d["vendor"], d["family"], tuple(d.get("covers", ["all"])),
                   {k: dict(v) for k, v in d["identity"].items()},
                   Expected(frozenset(e.get("protocols", ())), frozenset(e.get("ports", ())),
                            frozenset(e.get("functions", ())),
                            bool(e["programming_in_production"])),
                   tuple(Advisory.from_dict(a) for a in d.get("advisory", ())), path)


@dataclass(frozen=True)
class AdvisoryMatch:
    id: str
    status: str
    title: str
    url: str
    cves: tuple[str, ...]
    cvss_base: float | None
    fixed: str | None
    remediation: str | None
    affected: str                      # the ranges, for people

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "title": self.title, "url": self.url,
                "cves": list(self.cves), "cvss_base": self.cvss_base, "fixed": self.fixed,
                "remediation": self.remediation, "affected": self.affected}


@dataclass(frozen=True)
class Match:
    """One profile that matched one identity, with the verdict on its firmware."""

    profile: str
    family: str
    vendor: str
    proto: str                          # matcher protocol group: enip, s7, modbus ...
    firmware: str | None
    status: str                         # vulnerable | fixed | not_affected | unknown
    advisories: tuple[AdvisoryMatch, ...] = field(default=())

    def _of(self, status: str) -> tuple[AdvisoryMatch, ...]:
        return tuple(a for a in self.advisories if a.status == status)

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        """The advisories that apply (vulnerable), or could (unknown)."""
        return tuple(dict.fromkeys(a.id for a in self.advisories
                                   if a.status in ("vulnerable", "unknown")))

    @property
    def cves(self) -> tuple[str, ...]:
        return tuple(sorted({c for a in self._of("vulnerable") or self._of("unknown")
                             for c in a.cves}))

    @property
    def cvss_max(self) -> float | None:
        scores = [a.cvss_base for a in self._of("vulnerable") or self._of("unknown")
                  if a.cvss_base is not None]
        return max(scores) if scores else None

    @property
    def fixed(self) -> str | None:
        """The lowest version that fixes every advisory the firmware is vulnerable to."""
        best: str | None = None
        for a in self._of("vulnerable"):
            if a.fixed is None:
                continue
            if best is None or (versions.compare(a.fixed, best) or 0) > 0:
                best = a.fixed
        return best

    @property
    def remediation(self) -> str | None:
        worst = sorted(self._of("vulnerable") or self._of("unknown"),
                       key=lambda a: (-(a.cvss_base or 0.0), a.id))
        for a in worst:
            if a.remediation:
                return a.remediation
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "family": self.family, "vendor": self.vendor,
                "proto": self.proto, "firmware": self.firmware, "status": self.status,
                "advisory_ids": list(self.advisory_ids), "cves": list(self.cves),
                "cvss_max": self.cvss_max, "fixed": self.fixed, "remediation": self.remediation,
                "advisories": [a.as_dict() for a in self.advisories]}


# -- matchers ------------------------------------------------------------------------------------

def norm_model(text: Any) -> str:
    return re.sub(r"\s+", "", str(text)).upper()


def model_matches(model: Any, pattern: str) -> bool:
    """Order/catalogue number ``model`` against ``pattern`` (spaces ignored, case-insensitive).

    ``6ES731*`` is an open prefix; ``1756-EN2T`` matches ``1756-EN2T`` and ``1756-EN2T/D`` but
    not ``1756-EN2TR`` (the next character must end the catalogue number).
    """
    m, p = norm_model(model), norm_model(pattern)
    if p.endswith("*"):
        return m.startswith(p[:-1])
    return m == p or (m.startswith(p) and m[len(p)] in "/-_.( ")


@lru_cache(maxsize=1024)
def _regex(p: str) -> re.Pattern[str]:
    return re.compile(p, re.IGNORECASE)


def _hexint(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            return None
    return None


def matcher_agrees(proto: str, matcher: dict[str, Any], identity: dict[str, Any]) -> bool:
    """True only when every key of ``matcher`` agrees with ``identity``."""
    spec = schema.MATCHERS[proto]
    for key, want in matcher.items():
        kind, attr = spec[key]
        have = identity.get(attr)
        if have is None or have == "":
            return False
        if kind == "int":
            if _hexint(have) != want:
                return False
        elif kind == "ints":
            if _hexint(have) not in want:
                return False
        elif kind == "strs":
            if str(have).lower() not in {w.lower() for w in want}:
                return False
        elif kind == "regex":
            if not _regex(want).search(str(have)):
                return False
        elif kind == "prefixes":
            if not any(model_matches(have, p) for p in want):
                return False
    return bool(matcher)


def advisory_status(adv: Advisory, firmware: str | None) -> str:
    v = versions.parse(firmware) if firmware is not None else None
    if v is None:
        return "unknown"
    inside = versions.in_any(v, list(adv.affected))
    if inside is None:
        return "unknown"
    fixed = versions.parse(adv.fixed) if adv.fixed else None
    at_fix = versions.compare(v, fixed) if fixed is not None else None
    if inside:
        # With one range per release line, one "fixed" cannot speak for the other lines.
        if at_fix is not None and at_fix >= 0 and len(adv.affected) == 1:
            return "fixed"
        return "vulnerable"
    if at_fix is not None and at_fix >= 0:
        return "fixed"
    return "not_affected"


def identities_by_proto(asset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An inventory asset's identity split by the protocol group that taught each attribute.

    ``learned_from`` says "proto kind @ts" per attribute; an attribute without it (an older
    inventory) goes to every group, and the all-keys rule keeps that from matching loosely.
    """
    ident = asset.get("identity") or {}
    learned = asset.get("learned_from") or {}
    out: dict[str, dict[str, Any]] = {}
    loose: dict[str, Any] = {}
    for attr, value in ident.items():
        src = learned.get(attr)
        proto = src.split(" ", 1)[0] if isinstance(src, str) and src else None
        group = schema.GROUP_OF.get(proto or "")
        if group is None:
            loose[attr] = value
        else:
            out.setdefault(group, {})[attr] = value
    if loose:
        for group in (*out, *(g for g in schema.MATCHERS if g not in out)):
            out.setdefault(group, {})
            for k, v in loose.items():
                out[group].setdefault(k, v)
    return {g: v for g, v in out.items() if v}


class ProfileSet:
    """Every profile of a directory, indexed by matcher protocol."""

    def __init__(self, profiles: Iterable[Profile], source: str = "") -> None:
        self.profiles: dict[str, Profile] = {}
        for p in profiles:
            if p.id in self.profiles:
                raise ProfileError(f"{p.path}: id: {p.id!r} also in {self.profiles[p.id].path}")
            self.profiles[p.id] = p
        self.source = source
        self.by_proto: dict[str, list[Profile]] = {}
        for p in sorted(self.profiles.values(), key=lambda p: p.id):
            for proto in p.identity:
                self.by_proto.setdefault(proto, []).append(p)

    @classmethod
    def load(cls, directory: str | Path) -> ProfileSet:
        directory = Path(directory)
        count, errors = schema.validate_dir(directory)
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise ProfileError(f"{errors[0]}{more}")
        profiles = [Profile.from_dict(schema.load_toml(p), str(p))
                    for p in schema.profile_files(directory)]
        return cls(profiles, str(directory))

    @classmethod
    def default(cls, state_dir: str | Path | None = None) -> ProfileSet:
        """The operator's installed set (``<state_dir>/firmware_profiles``) or the shipped one."""
        return cls.load(active_dir(state_dir))

    def __len__(self) -> int:
        return len(self.profiles)

    def get(self, profile_id: str) -> Profile | None:
        return self.profiles.get(profile_id)

    def match(self, identity: dict[str, Any], proto: str | None = None) -> list[Match]:
        """Profiles whose matcher for ``proto`` (a message protocol or matcher group) agrees
        with ``identity``. Without ``proto`` every group is tried."""
        if proto is not None:
            groups = [schema.GROUP_OF.get(proto, proto)]
        else:
            groups = list(self.by_proto)
        out: list[Match] = []
        for group in groups:
            for p in self.by_proto.get(group, ()):
                if matcher_agrees(group, p.identity[group], identity):
                    m = self._verdict(p, group, identity)
                    if m is not None:
                        out.append(m)
        return out

    def match_asset(self, asset: dict[str, Any]) -> list[Match]:
        """Every profile an inventory asset matches, one per profile: the match with a firmware
        wins over one without (a PROFINET identity carries none, S7 does)."""
        best: dict[str, Match] = {}
        for group, ident in sorted(identities_by_proto(asset).items()):
            for m in self.match(ident, group):
                old = best.get(m.profile)
                if old is None or (old.firmware is None and m.firmware is not None):
                    best[m.profile] = m
        return sorted(best.values(), key=lambda m: (-STATUS_RANK[m.status], m.profile))

    def _verdict(self, p: Profile, group: str, identity: dict[str, Any]) -> Match | None:
        firmware = identity.get("firmware")
        firmware = str(firmware) if firmware not in (None, "") else None
        if firmware is not None and versions.parse(firmware) is not None:
            covered = versions.in_any(firmware, list(p.covers))
            if covered is False:
                return None
        model = identity.get(schema.MODEL_ATTR[group])
        results: list[AdvisoryMatch] = []
        for adv in p.advisories:
            if adv.models:
                if model is None:
                    status = "unknown"
                elif not any(model_matches(model, m) for m in adv.models):
                    continue
                else:
                    status = advisory_status(adv, firmware)
            else:
                status = advisory_status(adv, firmware)
            results.append(AdvisoryMatch(
                adv.id, status, adv.title, adv.url, adv.cves, adv.cvss_base, adv.fixed,
                adv.remediation, "; ".join(versions.range_text(r) for r in adv.affected)))
        if firmware is None or versions.parse(firmware) is None:
            status = "unknown"
        elif results:
            status = max((a.status for a in results), key=lambda s: STATUS_RANK[s])
        else:
            status = "not_affected"
        return Match(p.id, p.family, p.vendor, group, firmware, status, tuple(results))


# -- expected behaviour ----------------------------------------------------------------------

def expected(profile: Profile, proto: str, family: str) -> bool:
    """Whether a request of function ``family`` over ``proto`` is normal for this device.

    Transport-only protocols (COTP under S7) and functions no family names ("other") are not
    judged. Programming families count as expected only where the profile allows programming
    in production.
    """
    exp = profile.expected
    if proto not in ("cotp",) and exp.protocols and proto not in exp.protocols:
        return False
    if family in schema.PROGRAMMING_FAMILIES:
        return exp.programming_in_production or family in exp.functions
    if family == "other" or not exp.functions:
        return True
    return family in exp.functions


def serves(profile: Profile, proto: str) -> bool:
    exp = profile.expected
    return proto == "cotp" or not exp.protocols or proto in exp.protocols


def programming_in_production(profile: Profile) -> bool:
    return profile.expected.programming_in_production


def active_dir(state_dir: str | Path | None = None) -> Path:
    if state_dir is not None:
        installed = Path(state_dir) / STATE_SUBDIR
        if installed.exists():
            return installed
    return SHIPPED_DIR
