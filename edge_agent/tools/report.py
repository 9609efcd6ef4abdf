"""``edge-agent report SOURCE --out report.html``: the plant on one self-contained HTML page.

SOURCE is a capture (replayed in memory, nothing written), a state directory, an export bundle
or the collector's database. See :mod:`edge_agent.report`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge_agent.tools import ToolError


def cmd_report(args: argparse.Namespace) -> int:
    from edge_agent.report import INSTALL_HINT, missing_dependencies
    missing = missing_dependencies()
    if missing:
        raise ToolError(f"the report needs {', '.join(missing)}, which are not installed: "
                        f"{INSTALL_HINT}")
    from edge_agent.cli import _config
    from edge_agent.report import render_plant, write
    from edge_agent.report.sources import load
    from edge_agent.summary.sign import load_public_keys

    keys = {}
    for source in args.key or []:
        try:
            keys.update(load_public_keys(source))
        except ValueError as exc:
            raise ToolError(f"--key {source}: {exc}") from None
    paths = [Path(p) for p in args.source]
    for p in paths:
        if not p.exists():
            raise ToolError(f"{p} does not exist")
    out = Path(args.out)
    if out.is_dir():
        raise ToolError(f"--out {out} is a directory; name the HTML file to write")
    started = time.monotonic()
    cfg = _config(args)
    plant = load(paths, cfg, keys, args.title)
    size = write(render_plant(plant), out)
    if not args.quiet:
        print(f"{out}: {len(plant.nodes)} devices, {sum(e.ot for e in plant.edges)} OT "
              f"conversations, {plant.findings_total} findings, {size / 1024:.0f} KiB in "
              f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="an HTML report: network map, inventory, findings over time")
    p.add_argument("source", nargs="+", metavar="SOURCE",
                   help="capture file(s), a state directory, an export bundle or the collector's "
                        "database")
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="HTML file to write")
    p.add_argument("--title", metavar="TEXT", help="page title (default: the site names)")
    p.add_argument("--key", action="append", metavar="PUBKEY",
                   help="trusted public key for signed sources (PEM, JWK, JWK Set); default: the "
                        "key in the state directory or the bundle, which checks integrity only")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (a capture is replayed "
                   "with its settings; default: the built-in defaults)")
    p.add_argument("--quiet", "-q", action="store_true", help="no closing line")
    p.epilog = "needs the report extra: pip install 'edge-agent[report]'"
    p.set_defaults(func=cmd_report)
