"""``edge-agent profiles``: firmware profiles (device identity -> expected behaviour, advisories).

- ``import CSAF_DIR --out DIR``  generate profiles from CISA CSAF advisories and the mapping
  tables (``DIR/mappings``); prints counts per vendor; byte-identical on the same input
- ``validate [DIR]``             check every profile; exit 1 naming file and key on any error
- ``show DEVICE``                a profile by id, the profiles an inventory asset (by IP)
  matches, or those an identity text (``key=value ...``) matches
- ``update BUNDLE``              install a signed profiles bundle into the state directory
- ``bundle DIR --version N --key PEM --out FILE``  make such a bundle (operator side)

``list_vulnerable`` is the listing behind ``edge-agent assets --vulnerable``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_agent.profiles import bundle as bundles
from edge_agent.profiles import csaf, schema
from edge_agent.profiles.assess import attributes_of, severity_of
from edge_agent.profiles.match import SHIPPED_DIR, ProfileError, ProfileSet, active_dir
from edge_agent.tools import ToolError


def _state_dir(args: argparse.Namespace) -> Path:
    from edge_agent.cli import _config
    return Path(_config(args)["agent"]["state_dir"])


def _profiles(args: argparse.Namespace) -> ProfileSet:
    directory = Path(args.dir) if getattr(args, "dir", None) else active_dir(_state_dir(args))
    try:
        return ProfileSet.load(directory)
    except ProfileError as exc:
        raise ToolError(f"profiles: {exc}") from None


def cmd_import(args: argparse.Namespace) -> int:
    out = Path(args.out)
    mappings = Path(args.mappings) if args.mappings else out / "mappings"
    try:
        maps = csaf.load_mappings(mappings)
        docs = csaf.read_advisories(args.csaf_dir)
        files, report = csaf.build(docs, maps)
    except (csaf.CSAFError, schema.SchemaError) as exc:
        raise ToolError(f"profiles import: {exc}") from None
    if not docs:
        raise ToolError(f"profiles import: no CSAF advisory under {args.csaf_dir}")
    csaf.write(files, out)
    print(report.render())
    print(f"{len(files) - 1} profiles and {schema.UNMAPPED} written to {out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else SHIPPED_DIR
    count, errors = schema.validate_dir(directory)
    for e in errors:
        print(f"edge-agent: profiles: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"{directory}: {count} profiles valid")
    return 0


def _identity_from_text(text: str) -> dict[str, Any]:
    ident: dict[str, Any] = {}
    for part in text.split(";") if ";" in text else text.split():
        if "=" not in part:
            raise ToolError(f"profiles show: {part!r}: give key=value (e.g. order_number='6ES7 "
                            "315-2EH14-0AB0' firmware=V3.2.7)")
        k, v = part.split("=", 1)
        v = v.strip().strip("'\"")
        ident[k.strip()] = int(v) if v.isdigit() and k.strip() in ("vendor_id", "product_code") \
            else v
    return ident


def _print_match(m: Any) -> None:
    print(f"{m.profile} ({m.family}) via {m.proto}: firmware {m.firmware or '?'} -> {m.status}")
    if m.status in ("vulnerable", "unknown"):
        print(f"  max CVSS {m.cvss_max}, fixed in {m.fixed or '-'}; {m.remediation or ''}")
    for a in m.advisories:
        print(f"  {a.status:<12} {a.id:<16} CVSS {a.cvss_base if a.cvss_base is not None else '-':<4}"
              f" affected {a.affected}; fixed {a.fixed or '-'}")


def cmd_show(args: argparse.Namespace) -> int:
    ps = _profiles(args)
    device = args.device
    prof = ps.get(device)
    if prof is not None:
        if args.json:
            print(json.dumps(schema.load_toml(Path(prof.path)), indent=2, sort_keys=True))
            return 0
        e = prof.expected
        print(f"{prof.id}: {prof.vendor} {prof.family}\n  identity: {json.dumps(prof.identity)}"
              f"\n  expected: protocols {sorted(e.protocols)}, ports {sorted(e.ports)}, "
              f"functions {sorted(e.functions)}, programming in production "
              f"{'yes' if e.programming_in_production else 'no'}\n  {len(prof.advisories)} "
              "advisory entries:")
        for a in prof.advisories:
            print(f"    {a.id:<16} CVSS {a.cvss_base if a.cvss_base is not None else '-':<4} "
                  f"{', '.join(a.cves)[:60]}")
        return 0
    if "=" in device:
        matches = ps.match(_identity_from_text(device), args.proto)
    else:
        from edge_agent.transport.assets import AssetStore
        path = _state_dir(args) / "assets.sqlite"
        if not path.exists():
            raise ToolError(f"profiles show: {device!r} is no profile id, and there is no "
                            f"inventory at {path} to look an address up in")
        assets = [a.as_dict() for a in AssetStore(path).load()]
        found = [a for a in assets if device in (a.get("ip"), a.get("mac"), a.get("key"))]
        if not found:
            raise ToolError(f"profiles show: no profile or asset {device!r}")
        matches = ps.match_asset(found[0])
    if args.json:
        print(json.dumps([m.as_dict() for m in matches], indent=2))
        return 0
    if not matches:
        print(f"{device}: no profile matches")
    for m in matches:
        _print_match(m)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from edge_agent.cli import _config
    cfg = _config(args)
    state = Path(cfg["agent"]["state_dir"])
    try:
        data = Path(args.bundle).read_bytes()
    except OSError as exc:
        raise ToolError(f"profiles update: cannot read {args.bundle}: {exc}") from None
    if len(data) > bundles.MAX_BUNDLE_BYTES:
        raise ToolError(f"profiles update: {args.bundle} is larger than "
                        f"{bundles.MAX_BUNDLE_BYTES} bytes")
    try:
        keys = bundles.operator_keys(cfg.data)
        version = bundles.install(data.decode("utf-8", "replace"), state, keys)
    except bundles.BundleError as exc:
        raise ToolError(f"profiles update refused: {exc}") from None
    print(f"profiles bundle version {version} installed in {state / 'firmware_profiles'}")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    try:
        key = serialization.load_pem_private_key(Path(args.key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ToolError(f"profiles bundle: cannot read the operator key {args.key}: {exc}") \
            from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ToolError("profiles bundle: the operator key must be Ed25519")
    count, errors = schema.validate_dir(args.dir)
    if errors:
        raise ToolError(f"profiles bundle: {errors[0]}")
    Path(args.out).write_text(bundles.make(args.dir, args.version, key), encoding="utf-8")
    print(f"{args.out}: {count} profiles, version {args.version}")
    return 0


def list_vulnerable(assets: list[dict[str, Any]], profiles: ProfileSet,
                    as_json: bool = False, include_unknown: bool = False) -> str:
    """The ``assets --vulnerable`` listing: assets whose firmware matches advisories."""
    rows: list[dict[str, Any]] = []
    for a in sorted(assets, key=lambda a: a["key"]):
        matches = profiles.match_asset(a)
        attrs = attributes_of(matches)
        status = attrs["firmware_status"]
        if status != "vulnerable" and not (include_unknown and status == "unknown"):
            continue
        top = matches[0]
        rows.append({"address": a.get("ip") or a.get("mac") or a["key"], "key": a["key"],
                     "profile": top.profile, "family": top.family, "firmware": top.firmware,
                     "firmware_status": status, "advisories": list(top.advisory_ids),
                     "cves": list(top.cves), "cvss_max": top.cvss_max,
                     "severity": severity_of(top.cvss_max), "fixed": top.fixed,
                     "remediation": top.remediation})
    if as_json:
        return json.dumps(rows, indent=2) + "\n"
    table = [["address", "profile", "firmware", "status", "cvss", "advisories", "fixed in"]]
    for r in rows:
        table.append([r["address"], r["profile"], r["firmware"] or "?", r["firmware_status"],
                      "-" if r["cvss_max"] is None else f"{r['cvss_max']:.1f}",
                      str(len(r["advisories"])), r["fixed"] or "-"])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.append(f"{len(rows)} vulnerable device(s)")
    return "\n".join(lines) + "\n"


def _state_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration (see `edge-agent config`)")
    p.add_argument("--state-dir", metavar="DIR", help="state directory")


def register(sub: argparse._SubParsersAction) -> None:
    prof = sub.add_parser("profiles", help="firmware profiles: advisories and expected behaviour")
    actions = prof.add_subparsers(dest="profiles_command", required=True, metavar="ACTION")
    imp = actions.add_parser("import", help="generate profiles from CISA CSAF advisories")
    imp.add_argument("csaf_dir", metavar="CSAF_DIR")
    imp.add_argument("--out", required=True, metavar="DIR", help="profile directory to write")
    imp.add_argument("--mappings", metavar="DIR", help="mapping tables (default: OUT/mappings)")
    imp.set_defaults(func=cmd_import)
    val = actions.add_parser("validate", help="check a profile directory")
    val.add_argument("dir", nargs="?", metavar="DIR", help="default: the shipped profiles")
    val.set_defaults(func=cmd_validate)
    show = actions.add_parser("show", help="a profile, or the profiles a device matches")
    show.add_argument("device", metavar="DEVICE",
                      help="profile id, asset IP/MAC, or identity text key=value ...")
    show.add_argument("--proto", help="protocol of an identity text (s7comm, enip, modbus ...)")
    show.add_argument("--dir", metavar="DIR", help="profile directory (default: the active set)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    _state_options(show)
    show.set_defaults(func=cmd_show)
    upd = actions.add_parser("update", help="install a signed profiles bundle")
    upd.add_argument("bundle", metavar="BUNDLE")
    _state_options(upd)
    upd.set_defaults(func=cmd_update)
    mk = actions.add_parser("bundle", help="make a signed profiles bundle (operator side)")
    mk.add_argument("dir", metavar="DIR")
    mk.add_argument("--version", type=int, required=True, metavar="N")
    mk.add_argument("--key", required=True, metavar="PEM", help="operator Ed25519 private key")
    mk.add_argument("--out", required=True, metavar="FILE")
    mk.set_defaults(func=cmd_bundle)
