"""The bundle's seal: the manifest's own checksum, the later records' list, and an optional signature of both.

``manifest.json`` lists the sha256 of every file ``compile`` writes (``artifact/``, ``reference/``, ``deploy/``);
``records.json`` lists the sha256 of every record written into the bundle later (``profile.json``,
``validation.json``, ``examples/``, ``report.md``, ``serving/``...), bound to that manifest and rewritten atomically
by each writer (:func:`seal_records`), so ``onnxsmith verify`` can account for every file. ``manifest.sha256`` holds
the sha256 of
``manifest.json`` itself, so an edited or damaged manifest is caught before any path in it is used. A checksum
stored beside the data detects accidents (a truncated copy, a hand edit), not an attacker who can rewrite both
files. For that, set ``ONNXSMITH_BUNDLE_KEY`` to a file holding a secret key: every bundle compiled then also gets
``manifest.sig`` (HMAC-SHA256 of the manifest with that key), and every bundle opened while the variable is set must
carry a valid signature; ``records.json`` then carries the same HMAC of its list. HMAC rather than public-key signatures keeps this to the standard library; the trade-off is
that whoever verifies holds the same key as whoever signs (the README's security section says so).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path

from onnxsmith.errors import BundleError, UserInputError

CHECKSUM = "manifest.sha256"
SIGNATURE = "manifest.sig"
RECORDS = "records.json"
SEAL_FILES = ("manifest.json", CHECKSUM, SIGNATURE, RECORDS)
"""The seal itself: no list holds these."""
KEY_VARIABLE = "ONNXSMITH_BUNDLE_KEY"


def signing_key() -> bytes | None:
    """The key from the file named by ``$ONNXSMITH_BUNDLE_KEY``, or None when the variable is unset."""
    location = os.environ.get(KEY_VARIABLE)
    if not location:
        return None
    try:
        key = Path(location).read_bytes().strip()
    except OSError as exc:
        raise UserInputError(f"cannot read the bundle key '{location}'", f"{KEY_VARIABLE} names it, and "
                             f"{exc.strerror or exc}", f"point {KEY_VARIABLE} at a readable key file, or unset it") from exc
    if len(key) < 16:
        raise UserInputError(f"the bundle key '{location}' is too short", f"{len(key)} bytes; at least 16 are needed",
                             "create one with: head -c 32 /dev/urandom | base64 > key")
    return key


def seal(directory: Path, raw_manifest: bytes) -> None:
    """Write ``manifest.sha256`` (and ``manifest.sig`` when a key is configured) for ``raw_manifest``."""
    (directory / CHECKSUM).write_text(hashlib.sha256(raw_manifest).hexdigest() + "\n")
    key = signing_key()
    if key is not None:
        (directory / SIGNATURE).write_text(hmac.new(key, raw_manifest, hashlib.sha256).hexdigest() + "\n")


def _read(path: Path) -> str | None:
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def verify_manifest(directory: Path, raw_manifest: bytes) -> None:
    """Refuse a manifest whose checksum (or, with a key configured, signature) does not match."""
    stored = _read(directory / CHECKSUM)
    if stored is None:
        raise BundleError(f"bundle '{directory}' has no {CHECKSUM}", "its manifest cannot be checked (bundles from "
                          "onnxsmith before 0.1.0's format 2 had none)", "compile the bundle again")
    if not hmac.compare_digest(stored, hashlib.sha256(raw_manifest).hexdigest()):
        raise BundleError(f"bundle '{directory}' was modified", f"manifest.json does not match {CHECKSUM}",
                          "compile the bundle again; never edit manifest.json")
    key = signing_key()
    if key is None:
        return
    signature = _read(directory / SIGNATURE)
    if signature is None:
        raise BundleError(f"bundle '{directory}' is not signed", f"{KEY_VARIABLE} is set, so only signed bundles "
                          "are loaded", f"compile it with {KEY_VARIABLE} set to the same key, or unset the variable")
    if not hmac.compare_digest(signature, hmac.new(key, raw_manifest, hashlib.sha256).hexdigest()):
        raise BundleError(f"bundle '{directory}' has a bad signature", f"{SIGNATURE} does not match manifest.json "
                          f"under the key in {KEY_VARIABLE}", "compile it again with this key; the bundle may have "
                          "been tampered with")


def _records_body(raw_manifest: bytes, files: Mapping[str, str]) -> bytes:
    """The bytes the records' checksum and signature cover: the list, bound to this manifest."""
    return json.dumps({"manifest_sha256": hashlib.sha256(raw_manifest).hexdigest(), "files": dict(sorted(files.items()))},
                      sort_keys=True, separators=(",", ":")).encode()


def seal_records(directory: Path, raw_manifest: bytes, files: Mapping[str, str]) -> None:
    """Replace ``records.json`` with ``files`` (path -> sha256), its checksum and, with a key, its signature:
    written to a temporary file, flushed to disk and renamed over the old one, so a reader sees the old list or the
    new one, never half of either."""
    body = _records_body(raw_manifest, files)
    key = signing_key()
    data = {"manifest_sha256": hashlib.sha256(raw_manifest).hexdigest(), "files": dict(sorted(files.items())),
            "sha256": hashlib.sha256(body).hexdigest(),
            "signature": None if key is None else hmac.new(key, body, hashlib.sha256).hexdigest()}
    path = directory / RECORDS
    tmp = path.with_name(f".{RECORDS}.{os.getpid()}.tmp")
    with open(tmp, "w") as out:
        out.write(json.dumps(data, indent=2) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_records(directory: Path, raw_manifest: bytes) -> dict[str, str]:
    """The later records' list (path -> sha256), after checking its checksum, that it belongs to this manifest
    and, with a key configured, its signature; ``{}`` when nothing was recorded yet."""
    path = directory / RECORDS
    if not path.exists() and not path.is_symlink():
        return {}

    def bad(why: str) -> BundleError:
        return BundleError(f"bundle '{directory}' was modified", f"{RECORDS} {why}",
                           "run the command that wrote the record again, or compile the bundle again")

    if path.is_symlink() or not path.is_file():
        raise bad("is not a plain file")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise bad(f"cannot be read ({exc})") from exc
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise bad("does not map paths to sha256 strings")
    body = _records_body(raw_manifest, files)
    if data.get("manifest_sha256") != hashlib.sha256(raw_manifest).hexdigest():
        raise bad("belongs to another manifest.json")
    if not isinstance(data.get("sha256"), str) or not hmac.compare_digest(data["sha256"], hashlib.sha256(body).hexdigest()):
        raise bad("does not match its own sha256")
    key = signing_key()
    if key is not None:
        signature = data.get("signature")
        if not isinstance(signature, str) or not hmac.compare_digest(signature, hmac.new(key, body,
                                                                                          hashlib.sha256).hexdigest()):
            raise bad(f"has no valid signature under the key in {KEY_VARIABLE}")
    return files
