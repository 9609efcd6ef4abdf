"""Everything a report can be made from, read into one :class:`~edge_agent.report.plant.Plant`.

- a **capture** (pcap/pcapng, one or several): the pipeline runs in memory with the
  configuration's defaults, as ``edge-agent run`` would, and nothing is written anywhere;
- a **state directory** (``spool.sqlite`` with the signed summaries and alerts,
  ``assets.sqlite`` with the inventory, ``baseline.json``), opened read-only, so a report can
  be made next to a running agent;
- an **export bundle** (``edge-agent export``): the manifest and the signed documents;
- the **collector's database** (``edge_agent.collector``): verified summaries and alerts of
  many agents and sites, for a fleet view.

Signed sources are checked with the same code as ``edge-agent verify`` and the verdict goes
into the report; documents are read whatever the verdict, and the page says which it was.
"""
from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent import __version__
from edge_agent.config import Config
from edge_agent.features.extract import load_families
from edge_agent.report.plant import Plant, PlantBuilder, Verification, family_lookup
from edge_agent.summary.sign import VerifyError, claims
from edge_agent.tools import ToolError

SQLITE_MAGIC = b"SQLite format 3\x00"
# pcap (both byte orders, micro- and nanosecond) and pcapng section header block
PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
               b"\x0a\x0d\x0d\x0a")
SPOOL_FILE = "spool.sqlite"
ASSETS_FILE = "assets.sqlite"


def kind_of(path: Path) -> str:
    """``capture``, ``state``, ``bundle`` or ``collector``; ToolError for anything else."""
    if path.is_dir():
        if (path / SPOOL_FILE).is_file() or (path / ASSETS_FILE).is_file():
            return "state"
        raise ToolError(f"{path} holds neither {SPOOL_FILE} nor {ASSETS_FILE}: not a state "
                        "directory")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc}") from None
    if head[:4] in PCAP_MAGICS:
        return "capture"
    if head == SQLITE_MAGIC:
        tables = _tables(path)
        if _is_collector(tables):
            return "collector"
        if "documents" in tables:
            return "state"              # a spool file given by name
        if "assets" in tables and len(tables) == 1:
            return "state"
        raise ToolError(f"{path} is an SQLite database with tables {', '.join(sorted(tables))}: "
                        "neither a spool, an inventory nor the collector's database")
    from edge_agent.transport.export import BundleError, read_bundle
    try:
        read_bundle(path)
    except BundleError:
        raise ToolError(f"{path} is not a capture, a state directory, an export bundle or the "
                        "collector's database") from None
    return "bundle"


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _tables(path: Path) -> set[str]:
    try:
        db = _connect_ro(path)
        try:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ToolError(f"cannot read {path}: {exc}") from None


def _is_collector(tables: set[str]) -> bool:
    """The collector's database (``edge_agent.collector``): agents, their summaries and
    documents (a spool has ``documents`` but neither of the others)."""
    return {"agents", "summaries", "documents"} <= tables


def load(paths: list[Path], cfg: Config, keys: dict[str, Ed25519PublicKey] | None = None,
         title: str | None = None) -> Plant:
    """The plant a report shows, from one source (or several capture files)."""
    kinds = [kind_of(p) for p in paths]
    if len(paths) > 1 and set(kinds) != {"capture"}:
        raise ToolError("several sources are only possible for capture files; give one state "
                        "directory, bundle or collector database")
    kind = kinds[0]
    label = ", ".join(str(p) for p in paths)
    if kind == "capture":
        builder = from_capture(paths, cfg)
    elif kind == "state":
        builder = from_state(paths[0], cfg, keys or {})
    elif kind == "bundle":
        builder = from_bundle(paths[0], keys or {})
    elif kind == "collector":
        builder = from_collector(paths[0], keys or {})
    else:  # pragma: no cover - kind_of returns nothing else
        raise ToolError(f"{paths[0]}: no reader for {kind}")
    if title is None:
        sites = sorted({a.site for a in builder.agents.values()})
        if kind == "collector":
            title = (f"Fleet report: {len(builder.agents)} agent"
                     f"{'s' * (len(builder.agents) != 1)} at {len(sites)} site"
                     f"{'s' * (len(sites) != 1)}")
        else:
            title = f"Plant network report: {', '.join(sites) if sites else label}"
    builder.source = label
    return builder.build(title)


# -- captures ---------------------------------------------------------------------------------

def from_capture(paths: list[Path], cfg: Config) -> PlantBuilder:
    """Runs the pipeline over the files in memory: no spool, no inventory, no key written."""
    from edge_agent.agent import Pipeline
    from edge_agent.capture.source import FileSource

    families = load_families()
    builder = PlantBuilder(families, ", ".join(map(str, paths)), "capture", signed=False)
    agent_id, site = cfg.agent_id, cfg["agent"]["site"]
    lookup = family_lookup(families)
    per_flow: dict[int, tuple[Counter[str], Counter[str]]] = defaultdict(
        lambda: (Counter(), Counter()))

    def on_event(ev: Any) -> None:
        msg = ev.message
        if msg.kind:
            fams, kinds = per_flow[ev.flow.flow_id]
            fams[lookup(msg.proto, msg.kind)] += 1
            kinds[msg.kind] += 1

    def sink(body: dict[str, Any]) -> None:
        builder.summary({**body, "agent_id": agent_id, "site": site,
                         "agent_version": __version__})

    baseline = None
    if cfg["detect"]["baseline"]:
        from edge_agent.detect.profiles import Baseline
        baseline = Baseline.load(Path(cfg["detect"]["baseline"]))
        builder.set_baseline(site, baseline.assets)
    source = FileSource([str(p) for p in paths], cfg["capture"]["bpf_filter"])
    builder.track_flows()
    scorer = _scorer(cfg)
    pipe = Pipeline(cfg, sink=sink, on_event=on_event, capture_stats=lambda: source.stats,
                    baseline=baseline, scorer=scorer)
    pipe.run(source)
    for asset in pipe.inventory.assets.values():
        record = asset.as_dict()
        for attr in ("vulnerabilities", "firmware_status"):
            if attr not in record and getattr(asset, attr, None) not in (None, "", []):
                record[attr] = getattr(asset, attr)
        builder.asset(site, agent_id, record)
    builder.exact_functions(per_flow)
    builder.verifications.append(Verification(
        "capture", unavailable="a capture replayed here: there is nothing signed to verify"))
    builder.notes.append(
        f"Replayed {pipe.packets} packets in memory with the "
        f"{'given' if cfg.path else 'default'} configuration: "
        f"{'the configured site baseline' if baseline else 'no site baseline (the rules that compare with one were off)'}"
        f", {'model ' + scorer.manifest.name if scorer is not None else 'no model'}.")
    return builder


def _scorer(cfg: Config) -> Any:
    """The model ``edge-agent run`` would use with no state of its own: the configured one,
    else the prebuilt one; none when switched off or not installed."""
    choice = cfg["detect"]["model"]
    if choice == "off":
        return None
    from edge_agent.config import ConfigError
    from edge_agent.model.scorer import ModelError, Scorer
    from edge_agent.model.store import prebuilt_manifest
    path = Path(choice) if choice else prebuilt_manifest()
    if not choice and not path.exists():
        return None
    try:
        return Scorer.load(path)
    except ModelError as exc:
        raise ConfigError("detect.model", str(exc)) from None


# -- state directories ------------------------------------------------------------------------

def _documents(spool: Path) -> Iterator[tuple[str, str]]:
    try:
        db = _connect_ro(spool)
        try:
            yield from db.execute("SELECT kind, doc FROM documents ORDER BY id")
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ToolError(f"cannot read the spool {spool}: {exc}") from None


def _feed(builder: PlantBuilder, kind: str, token: str) -> bool:
    """One stored token into the plant; False when it cannot even be read (the verdict says
    why)."""
    try:
        doc = claims(token)
    except (VerifyError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    kind = doc.get("type") or kind
    if kind == "summary" or (kind is None and "seq" in doc):
        builder.summary(doc)
    elif kind == "alert":
        builder.alert(doc)
    return True


def from_state(path: Path, cfg: Config, keys: dict[str, Ed25519PublicKey]) -> PlantBuilder:
    state = path if path.is_dir() else path.parent
    builder = PlantBuilder(load_families(), str(state), "state", signed=True)
    spool = state / SPOOL_FILE
    unreadable = 0
    if spool.is_file():
        for kind, token in _documents(spool):
            unreadable += not _feed(builder, kind, token)
        builder.verifications.append(_verify(f"spool {spool}", spool, keys))
    else:
        builder.verifications.append(Verification(str(state), unavailable="no spool.sqlite"))
    sites = {a.site for a in builder.agents.values()} or {cfg["agent"]["site"]}
    agent_id = next(iter(builder.agents), (cfg.agent_id, ""))[0]
    assets = state / ASSETS_FILE
    if assets.is_file():
        try:
            db = _connect_ro(assets)
            try:
                rows = db.execute("SELECT doc FROM assets ORDER BY last_seen").fetchall()
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise ToolError(f"cannot read the inventory {assets}: {exc}") from None
        site = sorted(sites)[0]
        for (doc,) in rows:
            try:
                record = json.loads(doc)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("key"):
                builder.asset(site, agent_id, record)
    baseline = Path(cfg["detect"]["baseline"] or state / "baseline.json")
    if baseline.is_file():
        from edge_agent.detect.profiles import Baseline
        try:
            devices = Baseline.load(baseline).assets
        except (OSError, ValueError, KeyError) as exc:
            builder.notes.append(f"The site baseline {baseline} could not be read ({exc}); "
                                 "devices are marked new against the first window instead.")
        else:
            for site in sites:
                builder.set_baseline(site, devices)
            builder.notes.append(f"Devices are marked new against the site baseline {baseline} "
                                 f"({len(devices)} devices).")
    if unreadable:
        builder.notes.append(f"{unreadable} stored document(s) could not be read at all.")
    return builder


def _verify(label: str, path: Path, keys: dict[str, Ed25519PublicKey]) -> Verification:
    from edge_agent.tools.verify import check
    try:
        return Verification(label, verdict=check(path, keys, None))
    except ToolError as exc:
        return Verification(label, unavailable=str(exc))


# -- export bundles ---------------------------------------------------------------------------

def from_bundle(path: Path, keys: dict[str, Ed25519PublicKey]) -> PlantBuilder:
    from edge_agent.transport.export import read_bundle
    bundle = read_bundle(path)
    builder = PlantBuilder(load_families(), str(path), "bundle", signed=True)
    unreadable = 0
    for token in bundle.documents():
        if token:
            unreadable += not _feed(builder, "", token)
    builder.verifications.append(_verify(f"bundle {path}", path, keys))
    builder.notes.append("A bundle carries the devices that were new or changed in its "
                         "summaries; a device known from before and unchanged since shows "
                         "on the map from its traffic only.")
    if unreadable:
        builder.notes.append(f"{unreadable} document(s) of the bundle could not be read at all.")
    return builder


# -- the collector's database ------------------------------------------------------------------

def from_collector(path: Path, keys: dict[str, Ed25519PublicKey]) -> PlantBuilder:
    """Every agent's stored summaries and alerts (the collector verified them at ingest), each
    agent's chain checked again here with the keys enrolled in the database."""
    from edge_agent.collector import FLAGS, REJECTS
    from edge_agent.summary.chain import ChainVerifier
    from edge_agent.summary.sign import load_public_keys

    builder = PlantBuilder(load_families(), str(path), "collector", signed=True)
    try:
        db = _connect_ro(path)
    except sqlite3.Error as exc:
        raise ToolError(f"cannot open the collector database {path}: {exc}") from None
    try:
        enrolled: dict[str, dict[str, Ed25519PublicKey]] = defaultdict(dict)
        for kid, agent_id, jwk in db.execute("SELECT kid, agent_id, jwk FROM keys"):
            try:
                enrolled[agent_id].update(load_public_keys(jwk))
            except ValueError:
                continue
        counters: dict[str, Counter[str]] = defaultdict(Counter)
        for agent_id, name, n in db.execute("SELECT agent_id, name, n FROM counters"):
            counters[agent_id][name] += n
        dropped: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for agent_id, lo, hi in db.execute("SELECT agent_id, lo, hi FROM dropped"):
            dropped[agent_id].append((lo, hi))
        agents = db.execute("SELECT agent_id, site FROM agents ORDER BY site, agent_id").fetchall()
        for agent_id, site in agents:
            agent_keys = {**enrolled.get(agent_id, {}), **keys}
            verifier = ChainVerifier(agent_keys) if agent_keys else None
            for (token,) in db.execute("SELECT token FROM summaries WHERE agent_id = ? "
                                       "ORDER BY seq", (agent_id,)):
                _feed(builder, "summary", token)
                if verifier is not None:
                    verifier.feed(token)
            for kind, token in db.execute("SELECT kind, token FROM documents WHERE agent_id = ? "
                                          "ORDER BY id", (agent_id,)):
                _feed(builder, kind, token)
                if verifier is not None:
                    verifier.feed(token)
            label = f"agent {agent_id} at site {site}"
            if verifier is None:
                builder.verifications.append(Verification(
                    label, unavailable="no key enrolled for this agent in the database (give "
                    "--key); the collector verified its documents when it stored them"))
                continue
            verifier.dropped_ranges.extend(dropped.get(agent_id, ()))
            verdict = verifier.finish()
            at_ingest = counters.get(agent_id, Counter())
            refused = {k: n for k, n in at_ingest.items() if k in REJECTS and n}
            flagged = {k: n for k, n in at_ingest.items() if k in FLAGS and n}
            if refused:
                verdict.notes.append("refused by the collector at ingest (not stored): " +
                                     ", ".join(f"{n} {k}" for k, n in sorted(refused.items())))
            if flagged:
                verdict.notes.append("flagged by the collector at ingest: " +
                                     ", ".join(f"{n} {k}" for k, n in sorted(flagged.items())))
            verdict.notes.append("checked again here with the key(s) enrolled in the "
                                 "collector's database" + (" and --key" if keys else ""))
            builder.verifications.append(Verification(label, verdict=verdict))
    except sqlite3.Error as exc:
        raise ToolError(f"cannot read the collector database {path}: {exc}") from None
    finally:
        db.close()
    builder.notes.append("The collector keeps each agent's summaries: a device shows in the "
                         "inventory from the summaries that reported it new or changed, and "
                         "on the map from its traffic.")
    return builder
