"""``edge-agent learn``: the site baseline (and, with a model, its site scaler and threshold)
from captures of normal plant traffic."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edge_agent.agent import Pipeline
from edge_agent.capture.source import FileSource
from edge_agent.detect.profiles import BaselineBuilder
from edge_agent.features.extract import load_families
from edge_agent.service import BASELINE_FILE, calibrate, load_scorer

log = logging.getLogger(__name__)


def cmd_learn(args: argparse.Namespace) -> int:
    from edge_agent.cli import _config
    cfg = _config(args)
    out = Path(args.out or cfg["agent"]["state_dir"])
    builder = BaselineBuilder(load_families(), cfg["limits"]["max_flows"])
    pipe = Pipeline(cfg, on_event=builder.observe, on_window=builder.observe_window)
    pipe.run(FileSource(args.pcap, cfg["capture"]["bpf_filter"]))
    baseline = builder.build(source=[str(p) for p in args.pcap])
    path = out / BASELINE_FILE
    baseline.save(path)
    print(f"learned {len(baseline.channels)} channel(s) and {len(baseline.assets)} device(s) "
          f"from {pipe.packets} packets in {builder.windows} window(s): {path}")
    scorer = load_scorer(cfg, out)
    if scorer is not None:
        site = calibrate(scorer, list(builder.vectors), out)
        if site is not None:
            print(f"calibrated model {scorer.manifest.name} v{scorer.manifest.version} for the "
                  f"site on {len(builder.vectors)} window(s): threshold "
                  f"{site.threshold.value:.3g}, {site.manifest_path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("learn", help="learn the site baseline from captures of normal traffic")
    p.add_argument("--pcap", nargs="+", required=True, metavar="FILE",
                   help="captures of normal plant traffic")
    p.add_argument("--out", metavar="DIR", help="where to write baseline.json (default: the state dir)")
    p.add_argument("--config", metavar="FILE", help="TOML configuration")
    p.add_argument("--state-dir", metavar="DIR", help="state directory")
    p.set_defaults(func=cmd_learn)
