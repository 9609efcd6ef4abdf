"""The products of a CSAF 2.0 advisory: the leaves of its product tree and their version ranges.

CSAF 2.0 (OASIS, 2022) section 3.1.4: the product tree (branches vendor -> product_name ->
product_version / product_version_range, full_product_names, relationships) read into
:class:`Leaf` objects, and the version of a leaf (``vers:`` strings, ``<=``/``<``/``>=``
bounds joined by ``|``, a single affected version) normalised into the ranges of a firmware
profile (firmware_profiles/README.md). Used by :mod:`edge_agent.profiles.csaf`; no I/O.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edge_agent.profiles import versions

_OP = re.compile(r"(<=|>=|==|=|<|>)\s*([^<>=|]+)")
_WS = re.compile(r"\s+")


# -- CSAF reading ------------------------------------------------------------------------------

@dataclass
class Leaf:
    pid: str
    vendor: str
    product: str                  # the product_name branch (or the full product name)
    name: str                     # the leaf's full product name
    category: str                 # product_version | product_version_range | full
    version: str
    models: list[str] = field(default_factory=list)


def norm(text: str) -> str:
    return _WS.sub(" ", str(text).replace("\u00a0", " ")).strip()


def leaves(doc: dict[str, Any]) -> dict[str, Leaf]:
    """Every product of a CSAF document by product_id."""
    out: dict[str, Leaf] = {}
    tree = doc.get("product_tree") or {}

    def helper_models(prod: dict[str, Any]) -> list[str]:
        h = prod.get("product_identification_helper") or {}
        return [str(m).upper().replace(" ", "") for m in h.get("model_numbers", []) or []]

    def walk(branches: list[dict[str, Any]], ctx: dict[str, str]) -> None:
        for b in branches or []:
            cat, name = b.get("category", ""), norm(b.get("name", ""))
            here = dict(ctx)
            if cat == "vendor":
                here["vendor"] = name
            elif cat in ("product_name", "product_family"):
                here["product"] = f"{here['product']} {name}".strip() if (
                    cat == "product_name" and here.get("family_only")) else name
                here["family_only"] = "1" if cat == "product_family" else ""
            elif cat in ("product_version", "product_version_range"):
                here["version"], here["category"] = name, cat
            prod = b.get("product")
            if prod and prod.get("product_id"):
                out[prod["product_id"]] = Leaf(
                    prod["product_id"], here.get("vendor", ""), here.get("product", ""),
                    norm(prod.get("name", "")), here.get("category", "full"),
                    here.get("version", ""), helper_models(prod))
            walk(b.get("branches", []), here)

    walk(tree.get("branches", []), {})
    for prod in tree.get("full_product_names", []) or []:
        if prod.get("product_id") and prod["product_id"] not in out:
            name = norm(prod.get("name", ""))
            out[prod["product_id"]] = Leaf(prod["product_id"], "", name, name, "full", "",
                                           helper_models(prod))
    for rel in tree.get("relationships", []) or []:
        ref = out.get(rel.get("product_reference", ""))
        fpn = rel.get("full_product_name") or {}
        if ref is not None and fpn.get("product_id") and fpn["product_id"] not in out:
            out[fpn["product_id"]] = Leaf(fpn["product_id"], ref.vendor, ref.product,
                                          norm(fpn.get("name", ref.name)), ref.category,
                                          ref.version, list(ref.models))
    return out


# -- version ranges ------------------------------------------------------------------------------

def _major_only(v: str) -> bool:
    p = versions.parse(v)
    return p is not None and len(p.parts) == 1


def parse_range(text: str, category: str = "product_version_range") -> list[Any]:
    """The normalised ranges of one CSAF version leaf (see firmware_profiles/README.md)."""
    raw = norm(text)
    s = re.sub(r"^vers:[a-z0-9.+-]*/", "", raw, flags=re.IGNORECASE).strip()
    if re.fullmatch(r"(\*|all|all versions?|all firmware versions?)", s, re.IGNORECASE):
        return ["all"]
    if not s:
        return [{"text": raw or "(empty)"}]
    m = re.fullmatch(r"(\S+)\s+-\s+(\S+)", s)
    if m and versions.parse(m.group(1)) and versions.parse(m.group(2)):
        hi = m.group(2)
        # "28  - 32" names major revisions: every 32.x is in it.
        return [{"ge": m.group(1), "le": f"{hi}.x" if _major_only(hi) else hi}]
    if category == "product_version" and not re.search(r"[<>=|]", s):
        # A single version named as affected: read as "this one and earlier" (vendors name
        # the last affected release), so older firmware is never reported as safe.
        return [{"le": s}] if versions.parse(s) else [{"text": raw}]
    s = re.sub(r"^all versions\s*", "", s, flags=re.IGNORECASE)
    out: list[Any] = []
    for token in s.split("|"):
        token = token.strip()
        if not token:
            continue
        pairs = [(mm.group(1), mm.group(2).strip()) for mm in _OP.finditer(token)]
        rest = _OP.sub("", token).strip()
        if not pairs:
            if versions.parse(token) is None:
                return [{"text": raw}]
            out.append({"eq": token})
            continue
        if rest or any(versions.parse(v) is None for _, v in pairs):
            return [{"text": raw}]
        cur: dict[str, str] = {}
        for op, v in pairs:
            key = {"<=": "le", ">=": "ge", "<": "lt", ">": "gt", "=": "eq", "==": "eq"}[op]
            if key == "le" and _major_only(v):
                v = f"{v}.x"
            if key in ("ge", "gt") and cur:
                out.append(cur)
                cur = {}
            if key == "eq":
                out.append({"eq": v})
                continue
            if key in cur or ({"lt", "le"} & cur.keys() and key in ("lt", "le")):
                out.append(cur)
                cur = {}
            cur[key] = v
        if cur:
            out.append(cur)
    # ">= 1.0 | <= 1.32": one lower and one upper bound in separate tokens are one range.
    if (len(out) == 2 and isinstance(out[0], dict) and isinstance(out[1], dict)
            and set(out[0]) <= {"ge", "gt"} and set(out[1]) <= {"le", "lt"}):
        out = [{**out[0], **out[1]}]
    return out or [{"text": raw}]


def _line_start(bound: str) -> str | None:
    v = versions.parse(bound)
    if v is None or len(v.parts) < 2 or v.has_wildcard:
        return None
    m = re.match(r"^\s*([A-Za-z]*)", bound)
    prefix = m.group(1) if m else ""
    prefix = prefix if prefix.upper() in ("V", "SV", "R") else ""
    return prefix + ".".join(str(p) for p in v.parts[:-1])


def release_lines(ranges: list[Any]) -> list[Any]:
    """One fix per release line, written as bare upper bounds: bound each line from below.

    ``< V4.10.111, < V5.00.171, < V6.00.204`` becomes ``< V4.10.111`` (and everything older),
    ``>= V5.0, < V5.00.171`` and ``>= V6.0, < V6.00.204``: V5.00.171, fixed, is not inside
    ``< V6.00.204`` any more. Bounds in one line are left alone.
    """
    uppers = [r for r in ranges if isinstance(r, dict) and set(r) <= {"lt", "le"} and r]
    if len(uppers) < 2:
        return ranges
    bounds = [str(r.get("lt") or r.get("le")) for r in uppers]
    lines = [_line_start(b) for b in bounds]
    parsed = [versions.parse(b) for b in bounds]
    starts = [versions.parse(x) if x else None for x in lines]
    if None in parsed or None in starts or len({v.parts for v in starts if v}) != len(lines):
        return ranges
    order = sorted(range(len(uppers)), key=lambda i: parsed[i].key(8))  # type: ignore[union-attr]
    fixed: dict[int, dict[str, str]] = {}
    for n, i in enumerate(order):
        fixed[id(uppers[i])] = uppers[i] if n == 0 else {"ge": str(lines[i]), **uppers[i]}
    return [fixed.get(id(r), r) if isinstance(r, dict) else r for r in ranges]


def _range_key(r: Any) -> str:
    return json.dumps(r, sort_keys=True)


def sorted_ranges(ranges: Iterable[Any]) -> list[Any]:
    uniq = {_range_key(r): r for r in ranges}
    if any(r == "all" for r in uniq.values()):
        return ["all"]
    return [uniq[k] for k in sorted(uniq)]
