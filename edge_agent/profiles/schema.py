"""The firmware profile schema: validation (every error names the file and the dotted key) and a
deterministic TOML writer (sorted keys, stable order, no timestamps).

The schema is documented key by key in ``firmware_profiles/README.md``; :data:`PROFILE_KEYS`,
:data:`MATCHERS` and :data:`ADVISORY_KEYS` are its machine form, and a test keeps the two in step.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.profiles import versions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA_VERSION = 1
# Files in a profile directory that are not profiles.
NOT_PROFILES = frozenset({"unmapped.toml"})
UNMAPPED = "unmapped.toml"

# Matcher protocol -> the message protocols (``Message.proto``) whose identity it reads.
PROTOCOL_GROUPS: dict[str, tuple[str, ...]] = {
    "enip": ("enip", "cip"),
    "s7": ("s7comm", "s7comm_plus"),
    "modbus": ("modbus",),
    "bacnet": ("bacnet",),
    "profinet": ("profinet_dcp", "profinet_io_cm"),
    "dnp3": ("dnp3",),
    "mms": ("mms",),
    "omron_fins": ("omron_fins",),
    "opcua": ("opcua",),
}
GROUP_OF: dict[str, str] = {p: g for g, ps in PROTOCOL_GROUPS.items() for p in ps}

# Matcher key -> (kind, identity attribute it is compared with). Kinds: "int" equal,
# "ints" one of, "strs" one of (case-insensitive), "regex" re.search (case-insensitive),
# "prefixes" order-number prefixes (spaces ignored; "*" at the end: open prefix).
MATCHERS: dict[str, dict[str, tuple[str, str]]] = {
    "enip": {"vendor_id": ("int", "vendor_id"), "product_code": ("ints", "product_code"),
             "device_type": ("strs", "device_type"), "product": ("regex", "product")},
    "s7": {"order_number": ("prefixes", "order_number"), "product": ("regex", "product")},
    "modbus": {"vendor": ("regex", "vendor"), "product_code": ("regex", "product_code"),
               "product": ("regex", "product"), "model": ("regex", "model")},
    "bacnet": {"vendor_id": ("int", "vendor_id"), "model": ("regex", "model")},
    "profinet": {"vendor_id": ("int", "vendor_id"), "device_id": ("ints", "product_code")},
    "dnp3": {"vendor": ("regex", "vendor"), "model": ("regex", "model")},
    "mms": {"vendor": ("regex", "vendor"), "model": ("regex", "model")},
    "omron_fins": {"model": ("regex", "model")},
    "opcua": {"vendor": ("regex", "vendor"), "product": ("regex", "product")},
}
# The identity attribute that names the exact model, for an advisory's ``models`` narrowing.
MODEL_ATTR: dict[str, str] = {
    "enip": "product", "s7": "order_number", "modbus": "product_code", "bacnet": "model",
    "profinet": "product_code", "dnp3": "model", "mms": "model", "omron_fins": "model",
    "opcua": "product",
}

# Message protocols and function families a profile may name under [expected].
KNOWN_PROTOCOLS = frozenset({
    "bacnet", "cip", "cotp", "dnp3", "enip", "goose", "iec104", "mms", "modbus", "omron_fins",
    "opcua", "profinet_dcp", "profinet_io_cm", "s7comm", "s7comm_plus", "sv",
})
FUNCTION_FAMILIES = ("read", "write", "stop", "start", "restart", "program_download",
                     "program_upload", "firmware", "diagnostic", "identify", "session", "time",
                     "io")
PROGRAMMING_FAMILIES = frozenset({"program_download", "program_upload", "firmware"})

PROFILE_KEYS = ("schema", "id", "vendor", "family", "description", "covers", "sources",
                "identity", "expected", "advisory")
EXPECTED_KEYS = ("protocols", "ports", "functions", "programming_in_production")
ADVISORY_KEYS = ("id", "title", "url", "cves", "cvss_base", "affected", "fixed", "remediation",
                 "models", "products")
RANGE_KEYS = versions.RANGE_OPS + ("text",)

ADVISORY_ID = re.compile(r"^ICSA-\d{2}-\d{3}-\d{2}[A-Z]?$")
CVE_ID = re.compile(r"^CVE-\d{4}-\d{4,}$")
PROFILE_ID = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")
PORT = re.compile(r"^(tcp|udp)/(\d{1,5})$")
MAX_REMEDIATION = 300


class SchemaError(ValueError):
    """One problem in one file: ``path``, dotted ``key`` and ``reason``."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")
        self.path = path
        self.key = key
        self.reason = reason


@dataclass
class _Check:
    path: str
    errors: list[SchemaError]

    def err(self, key: str, reason: str) -> None:
        self.errors.append(SchemaError(self.path, key, reason))

    def unknown(self, key: str, table: dict[str, Any], known: Iterable[str]) -> None:
        known = tuple(known)
        for k in table:
            if k not in known:
                self.err(f"{key}.{k}" if key else k, f"unknown key; known: {', '.join(known)}")

    def string(self, key: str, value: Any, required: bool = True) -> bool:
        if value is None:
            if required:
                self.err(key, "missing")
            return False
        if not isinstance(value, str) or not value.strip():
            self.err(key, f"must be a non-empty string, not {value!r}")
            return False
        return True

    def strings(self, key: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.err(key, "must be a list of non-empty strings")
            return []
        return value


def check_range(c: _Check, key: str, rng: Any) -> None:
    if rng == "all":
        return
    if not isinstance(rng, dict) or not rng:
        c.err(key, f'must be "all" or a table of {", ".join(RANGE_KEYS)}, not {rng!r}')
        return
    c.unknown(key, rng, RANGE_KEYS)
    if "text" in rng:
        if len(rng) != 1 or not isinstance(rng["text"], str):
            c.err(key, "text stands alone and holds the vendor's words")
        return
    if "eq" in rng and len(rng) > 1:
        c.err(key, "eq stands alone")
    if "ge" in rng and "gt" in rng or "le" in rng and "lt" in rng:
        c.err(key, "give one lower and one upper bound at most")
    for op in versions.RANGE_OPS:
        if op in rng:
            if not isinstance(rng[op], str) or versions.parse(rng[op]) is None:
                c.err(f"{key}.{op}", f"not a version this agent can compare: {rng[op]!r}")
    lo = rng.get("ge", rng.get("gt"))
    hi = rng.get("lt", rng.get("le"))
    if lo is not None and hi is not None:
        cmp = versions.compare(lo, hi)
        if cmp is not None and cmp > 0:
            c.err(key, f"lower bound {lo} above upper bound {hi}")


def check_regex(c: _Check, key: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        c.err(key, "must be a regular expression (string)")
        return
    try:
        re.compile(value)
    except re.error as exc:
        c.err(key, f"not a valid regular expression: {exc}")


def check_matcher(c: _Check, key: str, proto: str, table: Any) -> None:
    if proto not in MATCHERS:
        c.err(key, f"unknown protocol; known: {', '.join(MATCHERS)}")
        return
    if not isinstance(table, dict) or not table:
        c.err(key, "must be a table with at least one matcher key")
        return
    c.unknown(key, table, MATCHERS[proto])
    for name, value in table.items():
        if name not in MATCHERS[proto]:
            continue
        kind = MATCHERS[proto][name][0]
        k = f"{key}.{name}"
        if kind == "int":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 65536:
                c.err(k, f"must be an integer 0..65535, not {value!r}")
        elif kind == "ints":
            if (not isinstance(value, list) or not value or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 65536
                    for v in value)):
                c.err(k, "must be a non-empty list of integers 0..65535")
        elif kind in ("strs", "prefixes"):
            if not c.strings(k, value) or not value:
                if value == []:
                    c.err(k, "must not be empty")
        elif kind == "regex":
            check_regex(c, k, value)


def check_advisory(c: _Check, key: str, adv: Any) -> None:
    if not isinstance(adv, dict):
        c.err(key, "must be a table")
        return
    c.unknown(key, adv, ADVISORY_KEYS)
    if c.string(f"{key}.id", adv.get("id")) and not ADVISORY_ID.match(adv["id"]):
        c.err(f"{key}.id", f"not an ICS advisory id (ICSA-YY-DDD-NN): {adv['id']!r}")
    c.string(f"{key}.title", adv.get("title"))
    if c.string(f"{key}.url", adv.get("url")) and not adv["url"].startswith("https://"):
        c.err(f"{key}.url", "must be an https:// URL")
    cves = adv.get("cves", [])
    if not isinstance(cves, list) or not all(isinstance(v, str) and CVE_ID.match(v)
                                              for v in cves):
        c.err(f"{key}.cves", "must be a list of CVE-YYYY-NNNN ids")
    if "cvss_base" in adv:
        v = adv["cvss_base"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 10:
            c.err(f"{key}.cvss_base", f"must be a number 0..10, not {v!r}")
    aff = adv.get("affected")
    if not isinstance(aff, list) or not aff:
        c.err(f"{key}.affected", 'must be a non-empty list of ranges ("all" or tables)')
    else:
        for i, rng in enumerate(aff):
            check_range(c, f"{key}.affected[{i}]", rng)
    if "fixed" in adv:
        if not isinstance(adv["fixed"], str) or versions.parse(adv["fixed"]) is None:
            c.err(f"{key}.fixed", f"not a version this agent can compare: {adv['fixed']!r}")
    if "remediation" in adv and c.string(f"{key}.remediation", adv["remediation"]):
        r = adv["remediation"]
        if "\n" in r or len(r) > MAX_REMEDIATION:
            c.err(f"{key}.remediation", f"one line of at most {MAX_REMEDIATION} characters")
    for name in ("models", "products"):
        if name in adv:
            c.strings(f"{key}.{name}", adv[name])


def check_profile(doc: dict[str, Any], path: str, stem: str | None = None) -> list[SchemaError]:
    """Every problem in one parsed profile (an empty list: valid)."""
    c = _Check(path, [])
    c.unknown("", doc, PROFILE_KEYS)
    if doc.get("schema") != SCHEMA_VERSION:
        c.err("schema", f"must be {SCHEMA_VERSION}, not {doc.get('schema')!r}")
    if c.string("id", doc.get("id")):
        if not PROFILE_ID.match(doc["id"]):
            c.err("id", "lower-case letters, digits and '-' only")
        elif stem is not None and doc["id"] != stem:
            c.err("id", f"must equal the file name ({stem})")
    c.string("vendor", doc.get("vendor"))
    c.string("family", doc.get("family"))
    if "description" in doc:
        c.string("description", doc["description"])
    if "sources" in doc:
        c.strings("sources", doc["sources"])
    covers = doc.get("covers", ["all"])
    if not isinstance(covers, list) or not covers:
        c.err("covers", "must be a non-empty list of ranges")
    else:
        for i, rng in enumerate(covers):
            check_range(c, f"covers[{i}]", rng)
    ident = doc.get("identity")
    if not isinstance(ident, dict) or not ident:
        c.err("identity", "must be a table with at least one protocol matcher")
    else:
        for proto, table in ident.items():
            check_matcher(c, f"identity.{proto}", proto, table)
    exp = doc.get("expected")
    if not isinstance(exp, dict):
        c.err("expected", "must be a table")
    else:
        c.unknown("expected", exp, EXPECTED_KEYS)
        for p in c.strings("expected.protocols", exp.get("protocols", [])):
            if p not in KNOWN_PROTOCOLS:
                c.err("expected.protocols", f"unknown protocol {p!r}; known: "
                      f"{', '.join(sorted(KNOWN_PROTOCOLS))}")
        for p in c.strings("expected.ports", exp.get("ports", [])):
            m = PORT.match(p)
            if not m or not 0 < int(m.group(2)) < 65536:
                c.err("expected.ports", f"{p!r}: write tcp/N or udp/N")
        for f in c.strings("expected.functions", exp.get("functions", [])):
            if f not in FUNCTION_FAMILIES:
                c.err("expected.functions", f"unknown function family {f!r}; known: "
                      f"{', '.join(FUNCTION_FAMILIES)}")
        if not isinstance(exp.get("programming_in_production"), bool):
            c.err("expected.programming_in_production", "must be true or false")
    advs = doc.get("advisory", [])
    if not isinstance(advs, list):
        c.err("advisory", "must be an array of tables ([[advisory]])")
    else:
        for i, adv in enumerate(advs):
            check_advisory(c, f"advisory[{i}]", adv)
    return c.errors


def check_unmapped(doc: dict[str, Any], path: str) -> list[SchemaError]:
    c = _Check(path, [])
    c.unknown("", doc, ("schema", "advisory"))
    for i, adv in enumerate(doc.get("advisory", [])):
        key = f"advisory[{i}]"
        c.unknown(key, adv, ("id", "vendor", "title", "products", "reason"))
        if c.string(f"{key}.id", adv.get("id")) and not ADVISORY_ID.match(adv["id"]):
            c.err(f"{key}.id", f"not an ICS advisory id: {adv['id']!r}")
        c.string(f"{key}.vendor", adv.get("vendor"))
        c.string(f"{key}.reason", adv.get("reason"))
        c.strings(f"{key}.products", adv.get("products", []))
    return c.errors


def load_toml(path: Path) -> dict[str, Any]:
    """A TOML file, or SchemaError naming the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(str(path), "", f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(str(path), "", f"not valid TOML: {exc}") from None


def profile_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.toml") if p.name not in NOT_PROFILES)


def validate_dir(directory: str | Path) -> tuple[int, list[SchemaError]]:
    """``(profiles checked, errors)`` for every profile in ``directory`` (plus unmapped.toml)."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0, [SchemaError(str(directory), "", "not a directory")]
    errors: list[SchemaError] = []
    ids: dict[str, str] = {}
    files = profile_files(directory)
    for path in files:
        try:
            doc = load_toml(path)
        except SchemaError as exc:
            errors.append(exc)
            continue
        errors += check_profile(doc, str(path), path.stem)
        pid = doc.get("id")
        if isinstance(pid, str):
            if pid in ids:
                errors.append(SchemaError(str(path), "id", f"also used by {ids[pid]}"))
            ids[pid] = str(path)
    unmapped = directory / UNMAPPED
    if unmapped.exists():
        try:
            errors += check_unmapped(load_toml(unmapped), str(unmapped))
        except SchemaError as exc:
            errors.append(exc)
    return len(files), errors


# -- deterministic TOML writer ---------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def _string(s: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes, except \/ which json never emits.
    return json.dumps(s, ensure_ascii=False)


def value(v: Any) -> str:
    """A TOML value: strings, integers, floats, booleans, lists and inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {value(v[k])}" for k in v) + " }" if v else "{}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _long_list(name: str, items: list[Any], width: int = 100) -> str:
    one = f"{_key(name)} = {value(items)}"
    if len(one) <= width or not items:
        return one
    return f"{_key(name)} = [\n" + "".join(f"    {value(x)},\n" for x in items) + "]"


def dump_table(lines: list[str], table: dict[str, Any]) -> None:
    for k, v in table.items():
        lines.append(_long_list(k, v) if isinstance(v, list) else f"{_key(k)} = {value(v)}")


def dumps_profile(doc: dict[str, Any], header: str = "") -> str:
    """A profile as TOML in the canonical order of :data:`PROFILE_KEYS`."""
    lines: list[str] = [f"## {h}" if h else "##" for h in header.splitlines()] if header else []
    for k in ("schema", "id", "vendor", "family", "description", "covers", "sources"):
        if k in doc:
            v = doc[k]
            lines.append(_long_list(k, v) if isinstance(v, list) else f"{k} = {value(v)}")
    for proto in sorted(doc.get("identity", {})):
        lines += ["", f"[identity.{proto}]"]
        dump_table(lines, dict(sorted(doc["identity"][proto].items())))
    if "expected" in doc:
        lines += ["", "[expected]"]
        dump_table(lines, {k: doc["expected"][k] for k in EXPECTED_KEYS if k in doc["expected"]})
    for adv in doc.get("advisory", []):
        lines += ["", "[[advisory]]"]
        dump_table(lines, {k: adv[k] for k in ADVISORY_KEYS if k in adv})
    return "\n".join(lines) + "\n"


def dumps_unmapped(entries: list[dict[str, Any]], header: str = "") -> str:
    lines: list[str] = [f"## {h}" if h else "##" for h in header.splitlines()] if header else []
    lines.append(f"schema = {SCHEMA_VERSION}")
    for e in entries:
        lines += ["", "[[advisory]]"]
        dump_table(lines, {k: e[k] for k in ("id", "vendor", "title", "products", "reason")
                           if k in e})
    return "\n".join(lines) + "\n"
