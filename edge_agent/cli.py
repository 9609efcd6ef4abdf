"""The ``edge-agent`` command line: argument parsing and the I/O at the pipeline's ends."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from edge_agent import __version__, logs
from edge_agent.agent import Pipeline
from edge_agent.capture.source import CaptureError, FileSource, LiveSource
from edge_agent.commands import StateLocked
from edge_agent.config import Config, ConfigError, load, sample_text
from edge_agent.events import to_record
from edge_agent.summary.report import CaptureReport, render
from edge_agent.service import Agent, profile_assessor
from edge_agent.tools import ToolError, register_all
from edge_agent.transport.assets import AssetStore
from edge_agent.transport.spool import Spool

log = logging.getLogger("edge_agent")
EXIT_CONFIG = 2


def _config(args: argparse.Namespace) -> Config:
    cfg = load(getattr(args, "config", None))
    overrides: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        overrides["agent.state_dir"] = args.state_dir
    if getattr(args, "interface", None):
        overrides["capture.interface"] = args.interface
    if getattr(args, "window", None):
        overrides["summary.window_s"] = args.window
    cfg = cfg.with_overrides(overrides) if overrides else cfg
    if not getattr(args, "verbose", False):
        logging.getLogger().setLevel(cfg["agent"]["log_level"].upper())
    return cfg


class Progress:
    """A one-line progress bar on stderr while files are read (only at a terminal)."""

    def __init__(self, source: FileSource, enabled: bool) -> None:
        self.source = source
        self.enabled = enabled and source.total_bytes > 0
        self.next_draw = 0.0

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now < self.next_draw and not force):
            return
        self.next_draw = now + 0.2
        frac = min(1.0, self.source.done_bytes / self.source.total_bytes)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r[{bar:<30}] {frac:4.0%}  {self.source.stats.received} packets")
        if force:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _stop_on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    cap = cfg["capture"]
    if args.pcap:
        source: FileSource | LiveSource = FileSource(args.pcap, cap["bpf_filter"])
    elif cap["interface"]:
        source = LiveSource(cap["interface"], cap["bpf_filter"], cap["snaplen"],
                            cap["promiscuous"], cap["buffer_mib"])
    else:
        print("edge-agent run: give --pcap FILE... or --interface IFACE "
              "(or capture.interface in the config)", file=sys.stderr)
        return EXIT_CONFIG
    stats = source.update_stats if isinstance(source, LiveSource) else (lambda: source.stats)
    agent = Agent(cfg, stats, replay=bool(args.pcap), source=source)
    _stop_on_signals(source.stop)
    first = agent.spool.next_seq()
    spool_path = agent.spool.path
    if isinstance(source, FileSource):
        progress = Progress(source, sys.stderr.isatty() and not args.quiet)
        agent.run(source, progress.draw)
        progress.draw(force=True)
    else:
        log.info("capturing on %s", cap["interface"])
        agent.run(source)
    pipe = agent.pipeline
    if not args.quiet:
        last = Spool(spool_path).next_seq() - 1
        print(f"{pipe.packets} packets, {pipe.windows} window(s); summaries "
              f"{first}..{last} in {spool_path}" if last >= first else
              f"{pipe.packets} packets; no summary written (no packets)", file=sys.stderr)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    cfg = _config(args)
    out = sys.stdout
    dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode

    def emit(ev: Any) -> None:
        out.write(dumps(to_record(ev)))
        out.write("\n")

    source = FileSource(args.files, cfg["capture"]["bpf_filter"])
    Pipeline(cfg, on_event=emit).run(source)
    out.flush()
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def cmd_inspect(args: argparse.Namespace) -> int:
    cfg = _config(args)
    report = CaptureReport()
    summaries: list[dict[str, Any]] = []
    source = FileSource(args.files, cfg["capture"]["bpf_filter"])
    Pipeline(cfg, sink=summaries.append, on_event=report, capture_stats=lambda: source.stats,
             profiles=profile_assessor(cfg, None)).run(source)
    rep = report.as_dict(summaries)
    if args.json:
        json.dump(rep, sys.stdout, indent=2, default=_json_default)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(rep))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.check:
        load(args.check)
        print(f"{args.check}: valid")
        return 0
    sys.stdout.write(sample_text())
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    cfg = _config(args)
    path = Path(cfg["agent"]["state_dir"]) / "assets.sqlite"
    if not path.exists():
        raise ToolError(f"no inventory at {path} yet: run the agent first")
    assets = [a.as_dict() for a in AssetStore(path).load()]
    if args.vulnerable:
        from edge_agent.profiles.match import ProfileError, ProfileSet
        from edge_agent.tools.profiles import list_vulnerable
        try:
            profile_set = ProfileSet.default(cfg["agent"]["state_dir"])
        except ProfileError as exc:
            raise ToolError(f"profiles: {exc}") from None
        sys.stdout.write(list_vulnerable(assets, profile_set, as_json=args.json))
        return 0
    if args.json:
        json.dump(assets, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = [["address", "mac", "mac vendor", "roles", "vendor", "model", "firmware", "serial",
             "last seen"]]
    for a in sorted(assets, key=lambda a: a["key"]):
        ident = a["identity"]
        rows.append([a["ip"] or a["mac"] or a["key"], a["mac"] or "", (a["mac_vendor"] or "")[:24],
                     ",".join(a["roles"]), ident.get("vendor", ""),
                     ident.get("model") or ident.get("product") or "", ident.get("firmware", ""),
                     ident.get("serial", ""), time.strftime("%Y-%m-%d %H:%M:%S",
                                                            time.gmtime(a["last_seen"]))])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"{len(assets)} device(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent",
                                     description="Passive security sensor for industrial networks.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="FILE", help="TOML configuration (see `edge-agent config`)")
        return p

    run = with_config(sub.add_parser("run", help="run the pipeline and write window summaries"))
    run.add_argument("--pcap", nargs="+", metavar="FILE", help="read capture files (pcap, pcapng)")
    run.add_argument("--interface", "-i", metavar="IFACE", help="capture live on IFACE")
    run.add_argument("--state-dir", metavar="DIR", help="state directory (spool, keys)")
    run.add_argument("--window", type=float, metavar="S", help="summary window in seconds")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress or closing line")
    run.set_defaults(func=cmd_run)

    dec = with_config(sub.add_parser("decode", help="print one JSON record per protocol message"))
    dec.add_argument("files", nargs="+", metavar="FILE")
    dec.add_argument("--format", choices=["jsonl"], default="jsonl")
    dec.set_defaults(func=cmd_decode)

    ins = with_config(sub.add_parser("inspect", help="a readable report of capture files"))
    ins.add_argument("files", nargs="+", metavar="FILE")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=cmd_inspect)

    assets = with_config(sub.add_parser("assets", help="list the devices in the inventory"))
    assets.add_argument("--state-dir", metavar="DIR", help="state directory")
    assets.add_argument("--json", action="store_true", help="machine-readable output")
    assets.add_argument("--vulnerable", action="store_true",
                        help="only devices whose firmware matches published advisories")
    assets.set_defaults(func=cmd_assets)

    cfg = sub.add_parser("config", help="print the documented sample configuration")
    cfg.add_argument("--check", metavar="FILE", help="validate FILE instead")
    cfg.set_defaults(func=cmd_config)
    register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"edge-agent: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CaptureError as exc:
        print(f"edge-agent: capture error: {exc}", file=sys.stderr)
        return 1
    except (ToolError, StateLocked) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
