"""What each command does, through the :class:`AgentControl` of the agent it runs in.

``HANDLERS`` maps a command name to its argument schema and a function
``(control, args) -> result``. The verifier checks ``args`` against the schema before anything
runs (``bad_args``); a handler that cannot do its job raises :class:`CommandError` with a
stable ``code`` (and, for configuration, the dotted ``key``), which becomes the ``error`` of
the signed result. The agent provides ``AgentControl``: the running agent applies changes
live; ``edge-agent apply`` provides one for an agent that is not running.

The files the commands change are replaced atomically (temporary file, fsync, ``os.replace``,
fsync of the directory), so a power cut leaves the old file or the new one:

- ``set_config``: the whole new configuration is validated first; ``<config>.prev`` keeps the
  previous one; if the agent cannot apply it, the previous file is put back.
- ``rotate_device_key``: two steps, see :func:`prepare_device_key`.
- ``model_update``: checked (features, SHA-256, version), installed in the state directory's
  model store (:mod:`edge_agent.model.store`) as ``models/<version>/``, then made current by
  the control, which loads it and scores a probe first (:func:`activate_model`); on failure
  the installed copy goes and the running model stays. The store keeps the current and the
  previous version (``model_rollback``); other fleet versions are deleted, so the disk used
  is bounded. A model named in ``detect.model`` is the site's choice: the fleet leaves it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from edge_agent import __version__
from edge_agent.config import Config, ConfigError, validate
from edge_agent.features.extract import FEATURE_NAMES, FEATURE_VERSION
from edge_agent.model.scorer import N_FEATURES, Manifest, ModelError, Scorer
from edge_agent.model.store import ModelStore, prebuilt_manifest
from edge_agent.summary.sign import KEY_FILE, DeviceKey, DeviceKeyError
from edge_agent.transport.export import ExportError, NothingToExport, export_bundle
from edge_agent.transport.spool import Spool

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NEXT_KEY_FILE = KEY_FILE + ".next"     # under agent.state_dir, during a key rotation
MANIFEST_FILE = "manifest.json"        # in a model folder (edge_agent.model.store)
EXPORTS_DIR = "exports"
EXPORTS_KEPT = 20               # bundles waiting to be collected; more is refused, never deleted
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_CONFIG_TEXT = 1 << 20
_ONNX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}\.onnx")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class CommandError(Exception):
    """A command that could not do its job; nothing it would have changed has changed."""

    def __init__(self, code: str, reason: str, key: str | None = None) -> None:
        super().__init__(f"{code}: {key + ': ' if key else ''}{reason}")
        self.code = code
        self.reason = reason
        self.key = key

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason, **({"key": self.key} if self.key else {})}


class AgentControl(Protocol):
    """What the agent running a command provides. Results are JSON-able dicts; ``None`` where
    there is nothing to add. Methods raise :class:`CommandError` for what they cannot do."""

    def status(self) -> dict[str, Any]: ...
    def get_config(self) -> dict[str, Any]: ...
    def config_path(self) -> Path | None: ...
    def apply_config(self, cfg: Config) -> dict[str, Any] | None: ...
    def learn(self, period_s: float | None) -> dict[str, Any] | None: ...
    def current_model(self) -> dict[str, Any] | None: ...     # {"name", "version", "manifest"}
    def swap_model(self, manifest_path: Path) -> dict[str, Any]: ...
    def rollback_model(self) -> dict[str, Any]: ...
    def rotate_key(self) -> dict[str, Any]: ...               # {"kid", "jwk", "previous_kid"}
    def commit_key(self) -> None: ...
    def export(self, since: int | None) -> dict[str, Any]: ...
    def restart_capture(self) -> dict[str, Any] | None: ...
    def set_log_level(self, level: str) -> dict[str, Any] | None: ...
    def state_dir(self) -> Path: ...


# --- argument schemas --------------------------------------------------------------------------

def _finite(v: Any) -> str | None:
    return None if math.isfinite(v) else "must be finite"


def _base64(v: str) -> str | None:
    try:
        base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        return "is not base64"
    return None


@dataclass(frozen=True)
class Arg:
    kind: type | tuple[type, ...]
    required: bool = True
    check: Callable[[Any], str | None] | None = None

    def problem(self, name: str, value: Any) -> str | None:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            want = " or ".join(k.__name__ for k in kinds)
            return f"args.{name} must be of type {want}, not {type(value).__name__}"
        problem = self.check(value) if self.check else None
        return f"args.{name} {problem}" if problem else None


@dataclass(frozen=True)
class Handler:
    run: Callable[[AgentControl, dict[str, Any]], dict[str, Any]]
    help: str
    args: dict[str, Arg] = field(default_factory=dict)
    one_of: tuple[str, ...] = ()     # exactly one of these is given
    # A second step, run once the (ok) result is recorded, again after a crash until it
    # returns: it must be idempotent.
    after: Callable[[AgentControl], None] | None = None

    def check_args(self, args: dict[str, Any]) -> str | None:
        """What is wrong with ``args`` (never their values: they may hold secrets), or None."""
        unknown = sorted(set(args) - set(self.args))
        if unknown:
            return (f"unknown argument(s) {', '.join(repr(u[:40]) for u in unknown[:5])}; "
                    f"known: {', '.join(self.args) or 'none'}")
        for name, spec in self.args.items():
            if name in args:
                problem = spec.problem(name, args[name])
                if problem:
                    return problem
            elif spec.required and name not in self.one_of:
                return f"args.{name} is missing"
        if self.one_of and sum(n in args for n in self.one_of) != 1:
            return f"give exactly one of {', '.join('args.' + n for n in self.one_of)}"
        return None


# --- files -------------------------------------------------------------------------------------

def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """``path`` holds ``data`` or what it held before, whatever happens meanwhile."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):    # JSON escapes are TOML escapes; DEL is the one JSON leaves raw
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ValueError(f"cannot write a {type(v).__name__} in TOML")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_value(k)


def to_toml(raw: dict[str, dict[str, Any]]) -> str:
    """The configuration as TOML, checked by reading it back (the config's value types only)."""
    try:
        text = "".join(f"[{_toml_key(s)}]\n" + "".join(f"{_toml_key(k)} = {_toml_value(v)}\n"
                                                        for k, v in keys.items()) + "\n"
                       for s, keys in raw.items())
        same = tomllib.loads(text) == raw
    except (ValueError, tomllib.TOMLDecodeError, UnicodeError):
        same = False
    if not same:
        raise CommandError("invalid_config", "cannot be written as TOML; send args.toml")
    return text


def replace_config(path: Path, text: str, apply: Callable[[], dict[str, Any] | None]
                   ) -> dict[str, Any]:
    """Write ``text`` to ``path`` (the old file kept as ``<name>.prev``), then ``apply()``; if
    that fails, the old file is put back."""
    path = path.resolve()      # a symlinked config: change the file, keep the link
    try:
        old: bytes | None = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        old, mode = None, 0o600
    prev = path.with_name(path.name + ".prev")
    data = text.encode("utf-8")
    if old is not None and old != data:     # the same config again keeps the real previous
        write_atomic(prev, old, mode)
    write_atomic(path, data, mode)
    try:
        details = apply()
    except Exception as exc:
        if old is not None:
            write_atomic(path, old, mode)
        else:
            path.unlink(missing_ok=True)
        code = exc.code if isinstance(exc, CommandError) else "apply_failed"
        raise CommandError(code, f"{exc}; the previous configuration is back in place") from None
    return {"path": str(path), "prev": str(prev) if old is not None else None,
            "sha256": hashlib.sha256(data).hexdigest(), **(details or {})}


# --- models ------------------------------------------------------------------------------------

def probe_model(manifest_path: Path) -> Scorer:
    """Load a model and score two probe vectors (the training mean, zeros): ModelError unless
    it loads and both scores are finite numbers."""
    import numpy as np
    scorer = Scorer.load(manifest_path)
    probe = np.asarray([scorer.manifest.scaler.mean, [0.0] * N_FEATURES], dtype=np.float64)
    try:
        scores = [s.score for s in scorer.score(probe)]
    except Exception as exc:   # onnxruntime's own errors
        raise ModelError(f"{manifest_path}: scoring a probe failed: {exc}") from None
    if not all(math.isfinite(s) for s in scores):
        raise ModelError(f"{manifest_path}: the model scores a probe as {scores}")
    return scorer


def model_info(manifest_path: Path) -> dict[str, Any]:
    m = Manifest.load(manifest_path, features=False)
    return {"name": m.name, "version": m.version, "manifest": str(manifest_path)}


def _in_use(store: ModelStore) -> set[Path]:
    return {p.parent.resolve() for p in (store.current(), store.previous()) if p is not None}


def _prune_models(store: ModelStore) -> None:
    """Fleet versions (folders named by version) that are neither current nor previous."""
    keep = _in_use(store)
    for d in store.root.iterdir():
        if d.is_dir() and d.name.isdigit() and d.resolve() not in keep:
            shutil.rmtree(d, ignore_errors=True)


def stage_model(state_dir: Path, manifest: Manifest, onnx: bytes) -> tuple[Path, bool]:
    """``(manifest path, created)``: the model installed (not active) as ``models/<version>``."""
    store = ModelStore(state_dir)
    final = store.root / str(manifest.version)
    if final.exists() and final.resolve() in _in_use(store):
        try:
            same = (Manifest.load(final / MANIFEST_FILE, features=False) == manifest
                    and (final / manifest.onnx_file).read_bytes() == onnx)
        except (ModelError, OSError):
            same = False
        if same:
            return final / MANIFEST_FILE, False
        raise CommandError("version_conflict", f"version {manifest.version} is in use with "
                                               "other content; publish it as a new version")
    path = store.install(manifest, onnx, str(manifest.version))
    for f in (path, path.parent / manifest.onnx_file):     # durable before it can be active
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(path.parent)
    fsync_dir(store.root)
    return path, True


def activate_model(state_dir: Path, manifest_path: Path, load: Callable[[Path], Any]
                   ) -> tuple[dict[str, Any], Any]:
    """Make an installed model current once ``load`` (e.g. :func:`probe_model`) accepted it;
    the current one becomes previous. Returns ``(info, what load returned)`` for the caller to
    put in use: a model that does not load changes nothing."""
    loaded = load(manifest_path)
    store = ModelStore(state_dir)
    previous = store.current()
    store.activate(manifest_path)
    _prune_models(store)
    return {**model_info(manifest_path), "previous": str(previous)}, loaded


def rollback_active_model(state_dir: Path, load: Callable[[Path], Any]
                          ) -> tuple[dict[str, Any], Any]:
    """Back to the previous model, else the prebuilt one (loaded first, as in
    :func:`activate_model`)."""
    store = ModelStore(state_dir)
    current = store.current()
    if current == prebuilt_manifest():
        raise CommandError("no_previous_model", "the prebuilt model is in use: there is "
                                                "nothing to roll back to")
    target = store.previous() or prebuilt_manifest()
    try:
        loaded = load(target)
    except ModelError as exc:
        raise CommandError("load_failed", f"{exc}; the current model stays") from None
    store.rollback()
    _prune_models(store)
    return {**model_info(target), "rolled_back": str(current)}, loaded


# --- keys and exports --------------------------------------------------------------------------

def prepare_device_key(state_dir: Path, current: DeviceKey) -> dict[str, Any]:
    """The next device key, made (or, after a crash, found) as ``device.key.next``.

    Key rotation takes two steps so the announcement can never be lost: this one, whose
    result (signed with ``current``) names the next key, and :func:`commit_device_key` once
    that result is recorded. Were the key replaced at once, a crash before the record would
    run the command again, signed by a key nobody was told about.
    """
    path = Path(state_dir) / NEXT_KEY_FILE
    try:
        nxt = DeviceKey.load(path) if path.exists() else DeviceKey.create(path)
    except DeviceKeyError:          # a torn or foreign file: it was never announced
        nxt = DeviceKey.create(path, force=True)
    return {"kid": nxt.kid, "jwk": nxt.public_jwk(), "previous_kid": current.kid}


def commit_device_key(state_dir: Path) -> DeviceKey | None:
    """``device.key.next`` becomes ``device.key``; the new key, or None if none was waiting."""
    nxt = Path(state_dir) / NEXT_KEY_FILE
    if not nxt.exists():
        return None
    key = DeviceKey.load(nxt)
    os.replace(nxt, Path(state_dir) / KEY_FILE)
    fsync_dir(Path(state_dir))
    return key


def export_to_state(spool: Spool, key: DeviceKey, state_dir: Path, since: int | None,
                    agent_id: str, site: str, now: float) -> dict[str, Any]:
    """A bundle (see :mod:`edge_agent.transport.export`) in ``<state_dir>/exports/``."""
    out_dir = Path(state_dir) / EXPORTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    waiting = sorted(out_dir.glob("*.bundle"))
    if len(waiting) >= EXPORTS_KEPT:
        raise CommandError("exports_full", f"{out_dir} holds {len(waiting)} bundles: collect "
                                           "and delete them first")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    out = out_dir / f"{agent_id}-{stamp}.bundle"
    n = 1
    while out.exists():
        n += 1
        out = out_dir / f"{agent_id}-{stamp}-{n}.bundle"
    try:
        manifest = export_bundle(spool, key, out, since, agent_id=agent_id, site=site, now=now)
    except NothingToExport as exc:
        return {"path": None, "size": 0, "count": 0, "note": str(exc)}
    except ExportError as exc:
        raise CommandError("export_failed", str(exc)) from None
    return {"path": str(out), "size": out.stat().st_size, "count": manifest["count"],
            "first_seq": manifest["first_seq"], "last_seq": manifest["last_seq"],
            "documents_sha256": manifest["documents_sha256"]}


# --- the handlers ------------------------------------------------------------------------------

def _ping(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    return {"pong": True, "agent_version": __version__}


def _status(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    return control.status()


def _get_config(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    path = control.config_path()
    return {"config": control.get_config(), "path": str(path) if path else None}


def _set_config(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    path = control.config_path()
    if path is None:
        raise CommandError("no_config_file", "the agent runs without --config: there is no "
                                             "configuration file to change")
    if "toml" in args:
        text = args["toml"]
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CommandError("invalid_config", f"not valid TOML: {exc}") from None
    else:
        raw = args["config"]
    try:
        cfg = validate(raw, str(path))
    except ConfigError as exc:
        raise CommandError("invalid_config", exc.reason, exc.key) from None
    if "toml" not in args:
        text = to_toml(raw)
    state = cfg["agent"]["state_dir"]
    if state != control.get_config()["agent"]["state_dir"] and \
            Path(state).resolve() != control.state_dir().resolve():
        raise CommandError("invalid_config", "cannot be changed by a command: the spool and "
                           "the replay store live there; change it on the gateway",
                           "agent.state_dir")
    from edge_agent.commands.verify import load_operator_keys
    try:
        keys = load_operator_keys(cfg["fleet"]["operator_keys"])
    except ConfigError as exc:
        raise CommandError("invalid_config", exc.reason, exc.key) from None
    if not keys:
        raise CommandError("invalid_config", "would trust no operator key: no command could "
                                             "reach this agent again", "fleet.operator_keys")
    return replace_config(Path(path), text, lambda: control.apply_config(cfg))


def _learn_start(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    period = float(args["period_s"])
    return {"learning": True, "period_s": period, **(control.learn(period) or {})}


def _learn_stop(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    return {"learning": False, **(control.learn(None) or {})}


def _not_pinned(control: AgentControl) -> None:
    if control.get_config()["detect"]["model"]:
        raise CommandError("model_pinned", "the configuration names the model to use: clear "
                                           "it (set_config) to manage models from the fleet",
                           "detect.model")


def _model_update(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    _not_pinned(control)
    data = args["manifest"]
    try:
        manifest = Manifest.from_dict(data, "args.manifest")
    except ModelError as exc:
        other = (data.get("feature_version", FEATURE_VERSION) != FEATURE_VERSION
                 or data.get("feature_names", list(FEATURE_NAMES)) != list(FEATURE_NAMES))
        raise CommandError("feature_mismatch" if other else "bad_manifest", str(exc)) from None
    if not _ONNX_NAME.fullmatch(manifest.onnx_file):
        raise CommandError("bad_manifest", "onnx_file must be a plain file name ending in .onnx")
    onnx = base64.b64decode(args["onnx"], validate=True)
    digest = hashlib.sha256(onnx).hexdigest()
    if digest != manifest.onnx_sha256:
        raise CommandError("hash_mismatch", f"the ONNX bytes hash to {digest}, the manifest "
                                            f"says {manifest.onnx_sha256}")
    current = control.current_model()
    if current and current["version"] == manifest.version:
        try:       # this very model: a repeated command (a crash before its result was kept)
            if Manifest.load(Path(current["manifest"]), features=False) == manifest:
                return {**current, "note": "already in use"}
        except ModelError:
            pass
    if current and not args.get("rollback", False) and manifest.version <= current["version"]:
        raise CommandError("version_not_newer", f"version {manifest.version} is not newer than "
                           f"the current {current['version']}; add \"rollback\": true to go back")
    path, created = stage_model(control.state_dir(), manifest, onnx)
    try:
        return control.swap_model(path)
    except Exception as exc:
        if created:
            shutil.rmtree(path.parent, ignore_errors=True)
        raise CommandError("load_failed", f"{exc}; the previous model stays") from None


def _model_rollback(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    _not_pinned(control)
    try:
        return control.rollback_model()
    except ModelError as exc:
        raise CommandError("load_failed", f"{exc}; the current model stays") from None


def _rotate_device_key(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    return control.rotate_key()


def _commit_device_key(control: AgentControl) -> None:
    control.commit_key()


def _export(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    return control.export(args.get("since"))


def _restart_capture(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    return {"restarted": True, **(control.restart_capture() or {})}


def _set_log_level(control: AgentControl, args: dict[str, Any]) -> dict[str, Any]:
    return {"level": args["level"], **(control.set_log_level(args["level"]) or {})}


def _in_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: _finite(v) or (None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}")


def _text(limit: int) -> Callable[[str], str | None]:
    return lambda v: None if len(v) <= limit else f"is longer than {limit} characters"


HANDLERS: dict[str, Handler] = {
    "ping": Handler(_ping, "answer, to check the path to an agent"),
    "status": Handler(_status, "the agent's state: capture, pipeline, transport, model, key"),
    "get_config": Handler(_get_config, "the configuration in use"),
    "set_config": Handler(_set_config, "replace the configuration file (validated in full)",
                          {"config": Arg(dict), "toml": Arg(str, check=_text(MAX_CONFIG_TEXT))},
                          one_of=("config", "toml")),
    "learn_start": Handler(_learn_start, "learn the site baseline for period_s seconds",
                           {"period_s": Arg((int, float), check=_in_range(1, 90 * 86_400))}),
    "learn_stop": Handler(_learn_stop, "stop learning; detect against what was learnt"),
    "model_update": Handler(_model_update, "install a newer model (manifest + ONNX, base64)",
                            {"manifest": Arg(dict), "onnx": Arg(str, check=_base64),
                             "rollback": Arg(bool, required=False)}),
    "model_rollback": Handler(_model_rollback, "back to the model the current one replaced"),
    "rotate_device_key": Handler(_rotate_device_key,
                                 "new device key; the result, signed by the old key, names it",
                                 after=_commit_device_key),
    "export": Handler(_export, "write a bundle to <state_dir>/exports/ (since a summary seq)",
                      {"since": Arg(int, required=False, check=_in_range(0, 2 ** 62))}),
    "restart_capture": Handler(_restart_capture, "reopen the capture interface"),
    "set_log_level": Handler(_set_log_level, "change the log level until the next restart",
                             {"level": Arg(str, check=lambda v: None if v in LOG_LEVELS else
                                           f"must be one of {', '.join(LOG_LEVELS)}")}),
}
