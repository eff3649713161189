"""The manifest's own checksum, and an optional signature with a key the user supplies.

``manifest.json`` lists the sha256 of every artifact and reference file; ``manifest.sha256`` holds the sha256 of
``manifest.json`` itself, so an edited or damaged manifest is caught before any path in it is used. A checksum
stored beside the data detects accidents (a truncated copy, a hand edit), not an attacker who can rewrite both
files. For that, set ``ONNXSMITH_BUNDLE_KEY`` to a file holding a secret key: every bundle compiled then also gets
``manifest.sig`` (HMAC-SHA256 of the manifest with that key), and every bundle opened while the variable is set must
carry a valid signature. HMAC rather than public-key signatures keeps this to the standard library; the trade-off is
that whoever verifies holds the same key as whoever signs (the README's security section says so).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from onnxsmith.errors import BundleError, UserInputError

CHECKSUM = "manifest.sha256"
SIGNATURE = "manifest.sig"
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
