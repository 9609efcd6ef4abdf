"""Where models live: the prebuilt one shipped with the agent, and versions in the state dir.

The state directory's ``models/`` holds one folder per installed version (a site calibration
from learning mode, or a model update from the fleet), each a manifest next to its ONNX file,
and a ``current`` pointer naming the active folder (``previous`` keeps the one before, for a
rollback). Pointers are replaced atomically; without one the prebuilt model is active.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from edge_agent.model.scorer import Manifest

PREBUILT = "edge-ae-v1.json"
POINTER, PREVIOUS = "current", "previous"


def shipped_dir() -> Path:
    """The prebuilt models: the checkout's models/ or, installed, <prefix>/share/edge-agent."""
    checkout = Path(__file__).resolve().parents[2] / "models"
    if (checkout / PREBUILT).exists():
        return checkout
    return Path(sys.prefix) / "share" / "edge-agent" / "models"


def prebuilt_manifest() -> Path:
    return shipped_dir() / PREBUILT


class ModelStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "models"

    def _read(self, name: str) -> Path | None:
        try:
            folder = (self.root / name).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        manifest = self.root / folder / "manifest.json"
        return manifest if manifest.exists() else None

    def current(self) -> Path:
        """The active manifest: the pointed-to version, else the prebuilt model."""
        return self._read(POINTER) or prebuilt_manifest()

    def previous(self) -> Path | None:
        return self._read(PREVIOUS)

    def _point(self, name: str, folder: str | None) -> None:
        path = self.root / name
        if folder is None:
            path.unlink(missing_ok=True)
            return
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}-")
        with os.fdopen(fd, "w") as f:
            f.write(folder + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def install(self, manifest: Manifest, onnx: bytes, tag: str) -> Path:
        """Write a version into its own folder (not yet active); return its manifest path."""
        self.root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=self.root, prefix=".stage-"))
        (stage / manifest.onnx_file).write_bytes(onnx)
        (stage / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=1))
        final = self.root / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(stage, final)
        return final / "manifest.json"

    def activate(self, manifest_path: Path) -> None:
        """Make an installed version current; the current one becomes ``previous``."""
        current = self._read(POINTER)
        if current is not None:
            self._point(PREVIOUS, current.parent.name)
        self._point(POINTER, manifest_path.parent.name)

    def rollback(self) -> Path:
        """Back to the previous version (or the prebuilt model); return the active manifest."""
        previous = self._read(PREVIOUS)
        self._point(POINTER, previous.parent.name if previous else None)
        self._point(PREVIOUS, None)
        return self.current()

    def fit_tag(self, manifest: Manifest) -> str:
        """A folder name for a site calibration of ``manifest``: site-<version>-<n>."""
        n = 1
        while (self.root / f"site-{manifest.version}-{n}").exists():
            n += 1
        return f"site-{manifest.version}-{n}"
