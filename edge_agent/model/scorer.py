"""Scores window feature vectors with the prebuilt ONNX autoencoder and explains each score.

A model is two files: ``<name>.onnx`` (the network: scaled features in, their reconstruction
out, batch dimension free) and ``<name>.json``, its manifest (the feature list and version it
was trained on, the scaler, the threshold, the ONNX file's SHA-256, what it was trained on).
:meth:`Scorer.load` refuses a model whose file does not match the checksum or whose features
are not exactly ``FEATURE_NAMES`` / ``FEATURE_VERSION``: a model fed columns it was not trained
on gives confident nonsense, so that is a start-up error, never a silent mismatch.

Scaling happens here, outside the graph, so a site's own scaler and threshold (learning mode:
:meth:`Scorer.fit_site`, then :meth:`Scorer.with_site`) apply without touching the network.
The score of a vector is the mean squared reconstruction error in scaled space; the
explanation names the features with the largest squared errors, with the observed value and
the value the model expected (its reconstruction mapped back to raw units).

No I/O beyond reading the two files at load; scoring takes arrays and returns dataclasses.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.features.extract import FEATURE_NAMES, FEATURE_VERSION, ChannelVector

N_FEATURES = len(FEATURE_NAMES)
# A feature that never varied in the data a scaler was fitted on still needs a finite scale:
# features are log1p rates, fractions and ratios of order 1, so a deviation of one floor
# (0.05) counts as one standard deviation. Smaller floors make any change on a constant
# feature (a first write on a read-only channel) dominate every score without bound.
STD_FLOOR = 0.05
THRESHOLD_POLICIES = ("quantile",)
# One threshold policy for the prebuilt model (scripts/train) and a site's calibration: the
# 0.999 quantile of the normal windows' scores, raised by 40 %. A site calibrates on its first
# minutes or hours of traffic, a few hundred windows at most, so their highest score
# underestimates a day's: with 25 % the ordinary variation of a plant crossed it several times a
# day.
QUANTILE = 0.999
MARGIN = 0.4
FIT_CHUNK = 16_384            # rows per session run when fitting a site
# Non-finite inputs would make a NaN score that is never "> threshold": they score as huge.
_CLIP = 1e6


class ModelError(Exception):
    """A model that must not be used: unreadable, tampered with, or built for other features."""


@dataclass(frozen=True)
class Scaler:
    """Standardisation applied before the network: ``(x - mean) / scale``."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray, floor: float = STD_FLOOR) -> Scaler:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError("a scaler needs at least one vector")
        std = np.maximum(x.std(axis=0), floor)
        return cls(tuple(float(v) for v in x.mean(axis=0)), tuple(float(v) for v in std))


@dataclass(frozen=True)
class Threshold:
    """Scores above ``value`` are anomalous.

    ``quantile`` policy: ``value = quantile(scores of normal windows, q) * (1 + margin)``,
    so at most ``1 - q`` of the windows it was fitted on exceed it.
    """

    policy: str
    q: float
    margin: float
    value: float

    @classmethod
    def fit(cls, scores: np.ndarray, q: float = QUANTILE, margin: float = MARGIN) -> Threshold:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.size == 0:
            raise ValueError("a threshold needs at least one score")
        # "higher": an observed score, never an interpolation below one, so the share of
        # fitting windows above the threshold is at most 1 - q even for few windows.
        base = float(np.quantile(scores, q, method="higher"))
        return cls("quantile", q, margin, base * (1.0 + margin))


@dataclass(frozen=True)
class Manifest:
    """``<name>.json``: what a model is, what it was trained on and how to score with it."""

    name: str
    version: int                        # increases with every model published under ``name``
    feature_version: int
    feature_names: tuple[str, ...]
    scaler: Scaler
    threshold: Threshold
    onnx_file: str                      # relative to the manifest's folder
    onnx_sha256: str
    input_name: str
    output_name: str
    trained_on: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    # Per feature, the training data's spread ({"min", "p01", "p50", "p99", "max"}): context
    # for people reading an explanation; "min"/"max" also bound the expected values shown.
    expected: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest",
                  features: bool = True) -> Manifest:
        """A manifest from its JSON; ``features``: refuse one built for other features (first,
        as that is the most telling of the errors)."""
        def need(key: str, kind: type | tuple[type, ...], obj: dict[str, Any] = data,
                 prefix: str = "") -> Any:
            if key not in obj:
                raise ModelError(f"{where}: {prefix}{key} is missing")
            value = obj[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise ModelError(f"{where}: {prefix}{key} has the wrong type "
                                 f"({type(value).__name__})")
            return value

        scaler_d = need("scaler", dict)
        mean = [float(v) for v in need("mean", list, scaler_d, "scaler.")]
        scale = [float(v) for v in need("scale", list, scaler_d, "scaler.")]
        thr_d = need("threshold", dict)
        names = need("feature_names", list)
        if not all(isinstance(n, str) for n in names):
            raise ModelError(f"{where}: feature_names must be strings")
        known = {"name", "version", "feature_version", "feature_names", "scaler", "threshold",
                 "onnx_file", "onnx_sha256", "input_name", "output_name", "trained_on",
                 "created", "expected"}
        manifest = cls(
            name=need("name", str), version=need("version", int),
            feature_version=need("feature_version", int), feature_names=tuple(names),
            scaler=Scaler(tuple(mean), tuple(scale)),
            threshold=Threshold(need("policy", str, thr_d, "threshold."),
                                float(need("q", (int, float), thr_d, "threshold.")),
                                float(need("margin", (int, float), thr_d, "threshold.")),
                                float(need("value", (int, float), thr_d, "threshold."))),
            onnx_file=need("onnx_file", str), onnx_sha256=need("onnx_sha256", str).lower(),
            input_name=need("input_name", str), output_name=need("output_name", str),
            trained_on=data.get("trained_on") or {}, created=data.get("created"),
            expected=data.get("expected") or {},
            extra={k: v for k, v in data.items() if k not in known})
        if features:
            manifest.check_features(where)
        manifest.validate(where)
        return manifest

    def validate(self, where: str = "manifest") -> None:
        """Internal consistency (not the match with this agent's features: see ``check_features``)."""
        n = len(self.feature_names)
        if self.version < 1:
            raise ModelError(f"{where}: version must be a positive integer")
        if len(self.scaler.mean) != n or len(self.scaler.scale) != n:
            raise ModelError(f"{where}: scaler has {len(self.scaler.mean)} means and "
                             f"{len(self.scaler.scale)} scales for {n} features")
        if not all(math.isfinite(v) for v in self.scaler.mean) or \
                not all(math.isfinite(v) and v > 0 for v in self.scaler.scale):
            raise ModelError(f"{where}: scaler values must be finite and scales positive")
        t = self.threshold
        if t.policy not in THRESHOLD_POLICIES:
            raise ModelError(f"{where}: threshold.policy {t.policy!r} is not one of "
                             f"{', '.join(THRESHOLD_POLICIES)}")
        if not (0 < t.q <= 1) or t.margin < 0 or not (math.isfinite(t.value) and t.value > 0):
            raise ModelError(f"{where}: threshold needs 0 < q <= 1, margin >= 0, value > 0")
        if len(self.onnx_sha256) != 64 or any(c not in "0123456789abcdef" for c in self.onnx_sha256):
            raise ModelError(f"{where}: onnx_sha256 is not a SHA-256 hex digest")
        if Path(self.onnx_file).name != self.onnx_file:
            raise ModelError(f"{where}: onnx_file must be a file name next to the manifest")

    def check_features(self, where: str = "manifest") -> None:
        """Refuse a model trained on other features than the ones this agent computes."""
        problems = []
        if self.feature_version != FEATURE_VERSION:
            problems.append(f"feature_version is {self.feature_version}, the agent computes "
                            f"version {FEATURE_VERSION}")
        if self.feature_names != FEATURE_NAMES:
            problems.append(describe_feature_difference(self.feature_names, FEATURE_NAMES))
        if problems:
            raise ModelError(f"{where}: model {self.name} v{self.version} was built for other "
                             f"features: {'; '.join(problems)}")

    def with_site(self, scaler: Scaler, threshold: Threshold,
                  fitted_on: dict[str, Any]) -> Manifest:
        """This model calibrated for a site, to be saved (``to_dict``) next to a copy of the
        .onnx: ``fitted_on`` says from what (e.g. windows, first/last ts), kept as ``site``."""
        return replace(self, scaler=scaler, threshold=threshold,
                       extra={**self.extra, "site": fitted_on})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "version": self.version, "feature_version": self.feature_version,
            "feature_names": list(self.feature_names),
            "scaler": {"mean": list(self.scaler.mean), "scale": list(self.scaler.scale)},
            "threshold": asdict(self.threshold),
            "onnx_file": self.onnx_file, "onnx_sha256": self.onnx_sha256,
            "input_name": self.input_name, "output_name": self.output_name,
            "trained_on": self.trained_on, "created": self.created, "expected": self.expected,
        }
        out.update(self.extra)
        return out

    @classmethod
    def load(cls, path: str | Path, features: bool = True) -> Manifest:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: cannot read the manifest: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}: the manifest is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelError(f"{path}: the manifest must be a JSON object")
        return cls.from_dict(data, str(path), features)


def describe_feature_difference(got: Sequence[str], want: Sequence[str]) -> str:
    """``got`` vs ``want`` in words: what is missing, unexpected, or in another place."""
    got_s, want_s = set(got), set(want)
    parts = []
    missing = [n for n in want if n not in got_s]
    unexpected = [n for n in got if n not in want_s]
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if unexpected:
        parts.append(f"unknown to the agent {', '.join(unexpected)}")
    if not missing and not unexpected:
        moved = [f"{n} at {i} (agent: {want.index(n)})" for i, n in enumerate(got)
                 if i >= len(want) or want[i] != n]
        if len(got) != len(want):
            parts.append(f"{len(got)} features listed, the agent has {len(want)}")
        if moved:
            parts.append(f"same features in another order: {', '.join(moved[:6])}"
                         + (" ..." if len(moved) > 6 else ""))
    return "feature_names differ from FEATURE_NAMES: " + "; ".join(parts)


@dataclass(frozen=True)
class Contribution:
    feature: str
    observed: float          # raw feature value
    expected: float          # the reconstruction in raw units (within the training range)
    contribution: float      # share of the vector's squared error, 0..1


@dataclass(frozen=True)
class Score:
    score: float             # mean squared reconstruction error in scaled space
    threshold: float
    anomalous: bool
    top: tuple[Contribution, ...]
    key: tuple[str, str, str] | None = None    # (client, server, protocol) when scored from a ChannelVector

    @property
    def ratio(self) -> float:
        """How far above (> 1) or below the threshold: a scale-free severity."""
        return self.score / self.threshold

    @property
    def explanation(self) -> list[dict[str, Any]]:
        """``top`` as plain dicts (feature, observed, expected, contribution) for findings."""
        return [asdict(c) for c in self.top]

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "anomalous": self.anomalous,
                "top": self.explanation}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def session_options(threads: int = 1) -> Any:
    import onnxruntime as ort
    so = ort.SessionOptions()
    # The agent shares a small CPU with capture and decoding: one thread, no spinning
    # workers, and no arena that keeps peak buffers after a big batch.
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = False
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class Scorer:
    """An ONNX session plus the manifest, scaler and threshold it scores with."""

    def __init__(self, manifest: Manifest, session: Any, scaler: Scaler | None = None,
                 threshold: Threshold | None = None, top_k: int = 3) -> None:
        self.manifest = manifest
        self.session = session
        self.site_fitted = scaler is not None or threshold is not None or "site" in manifest.extra
        self.scaler = scaler or manifest.scaler
        self.threshold = threshold or manifest.threshold
        self.top_k = top_k
        self._mean = np.asarray(self.scaler.mean, dtype=np.float64)
        self._scale = np.asarray(self.scaler.scale, dtype=np.float64)
        self._names = manifest.feature_names
        # A reconstruction can stray outside anything a feature can be (a negative share);
        # what is shown as "expected" stays within the range seen in training.
        exp = manifest.expected
        self._lo = np.asarray([exp.get(n, {}).get("min", -np.inf) for n in self._names], float)
        self._hi = np.asarray([exp.get(n, {}).get("max", np.inf) for n in self._names], float)
        self._input = manifest.input_name
        self._output = [manifest.output_name]
        self.path: Path | None = None          # the manifest it was loaded from

    @classmethod
    def load(cls, path: str | Path, threads: int = 1, top_k: int = 3) -> Scorer:
        """The model described by the manifest at ``path``; :class:`ModelError` if unusable."""
        path = Path(path)
        if threads < 1:
            raise ValueError("threads must be at least 1")
        manifest = Manifest.load(path)
        onnx_path = path.parent / manifest.onnx_file
        try:
            blob = onnx_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{path}: cannot read {onnx_path}: {exc}") from None
        digest = _sha256(blob)
        if digest != manifest.onnx_sha256:
            raise ModelError(f"{onnx_path}: sha256 {digest} does not match the manifest's "
                             f"onnx_sha256 {manifest.onnx_sha256}: the file was changed or "
                             f"belongs to another manifest")
        import onnxruntime as ort
        try:
            # Built from the bytes that were hashed, so the file cannot change in between.
            session = ort.InferenceSession(blob, sess_options=session_options(threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own hierarchy of errors
            raise ModelError(f"{onnx_path}: onnxruntime cannot load it: {exc}") from None
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if set(inputs) != {manifest.input_name} or manifest.output_name not in outputs:
            raise ModelError(f"{onnx_path}: graph has inputs {sorted(inputs)} and outputs "
                             f"{sorted(outputs)}, the manifest names input "
                             f"{manifest.input_name!r} and output {manifest.output_name!r}")
        width = inputs[manifest.input_name].shape[-1]
        if isinstance(width, int) and width != N_FEATURES:
            raise ModelError(f"{onnx_path}: the graph takes {width} features, the agent "
                             f"computes {N_FEATURES}")
        scorer = cls(manifest, session, top_k=top_k)
        scorer.path = path
        return scorer

    def describe(self) -> dict[str, Any]:
        """What scores are judged with, for status documents and summaries."""
        m = self.manifest
        return {"name": m.name, "version": m.version, "feature_version": m.feature_version,
                "onnx_sha256": m.onnx_sha256, "created": m.created,
                "threshold": self.threshold.value,
                "calibration": "site" if self.site_fitted else "prebuilt"}

    def with_site(self, scaler: Scaler, threshold: Threshold) -> Scorer:
        """The same network with a site's own scaler and threshold (the session is shared)."""
        if len(scaler.mean) != N_FEATURES or len(scaler.scale) != N_FEATURES:
            raise ValueError(f"site scaler must have {N_FEATURES} means and scales")
        site = Scorer(self.manifest, self.session, scaler, threshold, self.top_k)
        site.path = self.path
        return site

    def fit_site(self, vectors: Sequence[ChannelVector] | np.ndarray, q: float = QUANTILE,
                 margin: float = MARGIN, floor: float = STD_FLOOR) -> tuple[Scaler, Threshold]:
        """A scaler and threshold fitted to a site's normal windows (learning mode).

        The scaler is the windows' mean and standard deviation (floored); the threshold is the
        ``q`` quantile of their own scores under that scaler, raised by ``margin``.
        """
        x = as_matrix(vectors)
        if x.shape[0] < 2:
            raise ValueError("site fitting needs at least two vectors")
        scaler = Scaler.fit(x, floor)
        site = Scorer(self.manifest, self.session, scaler, self.threshold, self.top_k)
        # Weeks of windows can be hundreds of thousands of rows: scored in slices so the
        # temporaries stay a few MiB inside the agent's memory budget.
        scores = np.concatenate([site._errors(x[i:i + FIT_CHUNK])[0]
                                 for i in range(0, len(x), FIT_CHUNK)])
        return scaler, Threshold.fit(scores, q, margin)

    def _errors(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores, per-feature squared errors and reconstructions (scaled), in one run."""
        xs = np.clip((x - self._mean) / self._scale, -_CLIP, _CLIP)
        recon = self.session.run(self._output, {self._input: xs.astype(np.float32)})[0]
        sq = (xs - recon.astype(np.float64)) ** 2
        return sq.mean(axis=1), sq, recon

    def score(self, vectors: Sequence[ChannelVector] | np.ndarray,
              top_k: int | None = None) -> list[Score]:
        """One :class:`Score` per vector, in order, from a single batched session run."""
        x = as_matrix(vectors)
        if x.shape[0] == 0:
            return []
        k = max(0, min(self.top_k if top_k is None else top_k, N_FEATURES))
        scores, sq, recon = self._errors(x)
        expected = np.clip(recon * self._scale + self._mean, self._lo, self._hi)
        totals = sq.sum(axis=1)
        order = np.argsort(-sq, axis=1, kind="stable")[:, :k]
        threshold = self.threshold.value
        keys = [v.key for v in vectors] if not isinstance(vectors, np.ndarray) else None
        out = []
        for i in range(x.shape[0]):
            total = totals[i] or 1.0
            top = tuple(Contribution(self._names[j], float(x[i, j]), float(expected[i, j]),
                                     float(sq[i, j] / total)) for j in order[i])
            s = float(scores[i])
            out.append(Score(s, threshold, s > threshold, top, keys[i] if keys else None))
        return out


def as_matrix(vectors: Sequence[ChannelVector] | np.ndarray) -> np.ndarray:
    """``(n, N_FEATURES)`` float64 from channel vectors or an array; non-finite values clipped."""
    if isinstance(vectors, np.ndarray):
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim == 1:
            x = x.reshape(1, -1)
    else:
        x = np.asarray([v.values for v in vectors], dtype=np.float64).reshape(-1, N_FEATURES)
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise ValueError(f"expected vectors of {N_FEATURES} features, got shape {x.shape}")
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=_CLIP, neginf=-_CLIP)
    return x
