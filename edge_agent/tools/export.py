"""``edge-agent export``: write the documents not exported yet to one bundle file.

See :mod:`edge_agent.transport.export` for the format; ``edge-agent verify`` checks it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_agent.cli import _config
from edge_agent.summary.sign import KEY_FILE, DeviceKey, DeviceKeyError
from edge_agent.tools import ToolError
from edge_agent.tools.keys import add_state_options
from edge_agent.transport.export import ExportError, NothingToExport, export_bundle
from edge_agent.transport.spool import Spool


def cmd_export(args: argparse.Namespace) -> int:
    cfg = _config(args)
    state = Path(cfg["agent"]["state_dir"])
    path = state / "spool.sqlite"
    if not path.is_file():
        raise ToolError(f"no spool at {path}; has `edge-agent run` written anything here?")
    try:
        key = DeviceKey.load(state / KEY_FILE)
    except DeviceKeyError as exc:
        raise ToolError(str(exc)) from None
    spool = Spool(path, cfg["spool"]["max_bytes"], cfg["spool"]["fsync"])
    try:
        manifest = export_bundle(spool, key, args.out, args.since, agent_id=cfg.agent_id,
                                 site=cfg["agent"]["site"], overwrite=args.force)
    except NothingToExport as exc:
        print(f"edge-agent: {exc}; nothing written (--since SEQ exports again)", file=sys.stderr)
        return 0
    except ExportError as exc:
        raise ToolError(str(exc)) from None
    finally:
        spool.close()
    kinds = ", ".join(f"{n} {k}" for k, n in manifest["counts"].items())
    seqs = (f"summaries {manifest['first_seq']}..{manifest['last_seq']}"
            if manifest["last_seq"] is not None else "no summaries")
    print(f"exported {manifest['count']} document(s) ({kinds}; {seqs}) to {args.out}\n"
          f"documents sha256: {manifest['documents_sha256']}\n"
          f"check with: edge-agent verify {args.out} --key ENROLLED_KEY (kid {key.kid})",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the documents not yet exported to a bundle file")
    p.add_argument("--out", required=True, metavar="FILE", help="bundle to write")
    p.add_argument("--since", type=int, metavar="SEQ",
                   help="export what follows summary SEQ instead of the last export")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    add_state_options(p)
    p.set_defaults(func=cmd_export)
