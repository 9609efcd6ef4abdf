"""Export for air-gapped gateways: the documents not exported yet, as one verifiable file.

A bundle is UTF-8 text, one JWS compact token per line, every line ending in ``\\n``::

    line 1    the manifest, signed by the device key
    line 2..  the documents exactly as the spool holds them (summaries, alerts, status,
              command results), in the order the agent stored them

The manifest payload is ``{"type": "export_manifest", "format": 1, "agent_id", "site",
"agent_version", "created" (epoch s), "kid", "device_key" (public JWK), "since_seq",
"since_hash", "dropped_seqs", "first_seq", "last_seq", "count", "counts" (per kind),
"documents_sha256", "last_summary_hash"}``. ``documents_sha256`` is over lines 2.. as
written, newlines included (``tail -n +2 BUNDLE | sha256sum``), so a cut or appended line, or
a torn last one, shows; ``since_seq``/``since_hash`` name the summary the bundle continues from
(0/null: the start), so a summary lost between two exports shows as a gap too.
``dropped_seqs`` (``[[first, last]]`` ranges) names the summaries the spool dropped, full,
before they were exported; the summaries that reported those drops may be gone too.

Why lines of tokens rather than a tar or zip: every document stays the exact token the agent
signed, any JOSE library or ``jq``-less shell can take the file apart, a reader streams it
line by line, and there is no archive format to parse. The device key travels in the manifest
for convenience only: a verifier must compare its kid with the key enrolled for the agent.

The file is written to a temporary name, fsynced and then moved into place; only then is the
watermark (spool meta ``exported_id``/``exported_seq``/``exported_hash``) advanced, in one
transaction, so a crash repeats an export but never skips documents.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent import __version__
from edge_agent.summary.sign import (
    DeviceKey,
    VerifyError,
    dumps,
    load_public_keys,
    split,
    token_hash,
)
from edge_agent.transport.spool import Spool

BUNDLE_FORMAT = 1
MANIFEST_TYPE = "export_manifest"
MAX_MANIFEST_LINE = 1 << 20     # a manifest is ~1 KiB; do not read a huge file as one line


class ExportError(Exception):
    """The export cannot be written; the message says why."""


class NothingToExport(ExportError):
    pass


class BundleError(Exception):
    """The file is not a bundle (its first line is not a signed export manifest)."""


def _payload(token: str) -> dict[str, Any] | None:
    try:
        body = json.loads(split(token)[1])
    except (VerifyError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _rows(spool: Spool, start_id: int, end_id: int) -> Iterator[tuple[int, str, int | None, str]]:
    yield from spool.db.execute("SELECT id, kind, seq, doc FROM documents WHERE id > ? AND "
                                "id <= ? ORDER BY id", (start_id, end_id))


def _start(spool: Spool, since: int | None) -> tuple[int, int]:
    """``(row id, summary seq)`` the export continues after."""
    if since is None:
        return int(spool.meta("exported_id") or 0), int(spool.meta("exported_seq") or 0)
    row = spool.db.execute("SELECT max(id) FROM documents WHERE kind = 'summary' AND seq <= ?",
                           (since,)).fetchone()
    return int(row[0] or 0), since


def export_bundle(spool: Spool, key: DeviceKey, out_path: str | Path, since: int | None = None,
                  *, agent_id: str | None = None, site: str | None = None,
                  now: float | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the documents after the watermark (or after summary ``since``) to ``out_path``.

    Returns the manifest. ``agent_id``/``site`` are used only when the bundle holds no summary
    to take them from. Raises :class:`NothingToExport` when there is nothing new.
    """
    out = Path(out_path)
    spool.db.execute("BEGIN")       # one snapshot for both passes, whatever the agent writes
    try:
        start_id, since_seq = _start(spool, since)
        end_id = int(spool.db.execute("SELECT coalesce(max(id), 0) FROM documents").fetchone()[0])
        row = spool.db.execute("SELECT doc FROM documents WHERE kind = 'summary' AND seq = ?",
                               (since_seq,)).fetchone()
        since_hash = token_hash(row[0]) if row else (
            spool.meta("exported_hash") if since_seq == int(spool.meta("exported_seq") or 0)
            else None)
        digest = hashlib.sha256()
        counts: Counter[str] = Counter()
        first_seq = last_seq = last_doc = None
        for rid, kind, seq, doc in _rows(spool, start_id, end_id):
            if "\n" in doc or "\r" in doc:
                raise ExportError(f"document {rid} spans lines; it is not a JWS token")
            digest.update(doc.encode("utf-8") + b"\n")
            counts[kind] += 1
            if kind == "summary" and seq is not None:
                first_seq = seq if first_seq is None else first_seq
                last_seq, last_doc = seq, doc
        if not counts:
            raise NothingToExport(f"nothing to export after summary {since_seq}")
        if out.exists() and not overwrite:
            raise ExportError(f"{out} already exists")
        # The spool drops only its oldest documents, so summaries missing between the last
        # export and the first one left can only be spool drops; later holes are not explained.
        upto = (first_seq if first_seq is not None else spool.next_seq()) - 1
        dropped = [[since_seq + 1, upto]] if upto > since_seq else []
        body = _payload(last_doc) if last_doc else None
        if body:
            agent_id, site = body.get("agent_id", agent_id), body.get("site", site)
        manifest = {
            "type": MANIFEST_TYPE, "format": BUNDLE_FORMAT, "agent_id": agent_id, "site": site,
            "agent_version": __version__, "created": time.time() if now is None else now,
            "kid": key.kid, "device_key": key.public_jwk(), "since_seq": since_seq,
            "since_hash": since_hash, "dropped_seqs": dropped, "first_seq": first_seq,
            "last_seq": last_seq,
            "count": sum(counts.values()), "counts": dict(sorted(counts.items())),
            "documents_sha256": digest.hexdigest(),
            "last_summary_hash": token_hash(last_doc) if last_doc else None,
        }
        _write(out, key.sign(dumps(manifest)), _rows(spool, start_id, end_id), overwrite)
    finally:
        spool.db.execute("COMMIT")
    _advance(spool, end_id, last_seq, token_hash(last_doc) if last_doc else None)
    return manifest


def _write(out: Path, manifest: str, rows: Iterator[tuple[int, str, int | None, str]],
           overwrite: bool) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(manifest.encode("ascii") + b"\n")
            f.writelines(doc.encode("utf-8") + b"\n" for _, _, _, doc in rows)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)        # refuses a file that appeared meanwhile
            except FileExistsError:
                raise ExportError(f"{out} already exists") from None
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _advance(spool: Spool, end_id: int, last_seq: int | None, last_hash: str | None) -> None:
    """Move the watermark forward (never back, even after ``--since``) in one transaction."""
    values: dict[str, object] = {}
    if end_id > int(spool.meta("exported_id") or 0):
        values["exported_id"] = end_id
    if last_seq is not None and last_seq >= int(spool.meta("exported_seq") or 0):
        values.update(exported_seq=last_seq, exported_hash=last_hash)
    spool.set_meta(values)


@dataclass
class Bundle:
    """A bundle opened by :func:`read_bundle`. Nothing in it is verified yet.

    :meth:`documents` streams the tokens; once it has run to the end, ``documents_sha256``
    (over the bytes actually present) and ``complete`` (the last line ended in a newline)
    are set, for comparison with the manifest.
    """

    path: Path
    manifest_token: str
    manifest: dict[str, Any]
    device_keys: dict[str, Ed25519PublicKey]
    documents_sha256: str | None = None
    complete: bool | None = None
    _offset: int = field(default=0, repr=False)

    def documents(self) -> Iterator[str]:
        digest = hashlib.sha256()
        complete = True
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            for line in f:
                digest.update(line)
                complete = line.endswith(b"\n")
                yield line.rstrip(b"\r\n").decode("utf-8", "replace")
        self.documents_sha256 = digest.hexdigest()
        self.complete = complete


def read_bundle(path: str | Path) -> Bundle:
    """Open a bundle; :class:`BundleError` if ``path`` is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            first = f.readline(MAX_MANIFEST_LINE)
            offset = f.tell()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None
    try:
        token = first.rstrip(b"\r\n").decode("ascii")
    except UnicodeDecodeError:
        raise BundleError(f"{path} is not a bundle") from None
    manifest = _payload(token)
    if manifest is None or manifest.get("type") != MANIFEST_TYPE:
        raise BundleError(f"{path} is not a bundle (no export manifest on its first line)")
    try:
        keys = load_public_keys(json.dumps(manifest["device_key"]))
    except (KeyError, ValueError, TypeError):
        keys = {}
    return Bundle(path, token, manifest, keys, _offset=offset)
