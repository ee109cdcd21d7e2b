"""Signed evidence, optional: an HMAC-SHA256 over each stage record with a key kept outside the project.

Without a key, records are checksums that catch accidents (a file changed since its stage wrote it)
but anyone who can edit the project can edit a record to match. With a key (``TRTPIPE_SIGNING_KEY``,
or the file ``$XDG_CONFIG_HOME/trtpipe/signing.key``, by default under ``~/.config``), every record
carries a signature over its content; a record without one, or with one that does not match, is
refused by every stage, ``trtpipe engines`` and deploy, and deploy writes each record's signature
into the deployment's manifest so a serving side holding the key can check it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from pipeline.errors import PipelineError

ENV = "TRTPIPE_SIGNING_KEY"
MAX_KEY_BYTES = 4096  # a key, not a file someone pointed the setting at by mistake


def key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "trtpipe" / "signing.key"


def signing_key() -> bytes | None:
    """The configured key, or None (records are then unsigned)."""
    if os.environ.get(ENV):
        return os.environ[ENV].encode()
    path = key_file()
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_KEY_BYTES:
            raise PipelineError(f"{path}: {path.stat().st_size} bytes is no signing key (at most {MAX_KEY_BYTES})")
        return path.read_bytes().strip() or None
    except OSError as exc:
        raise PipelineError(f"{path}: the signing key cannot be read ({exc.strerror})") from None


def signature(content: dict, key: bytes) -> str:
    """HMAC-SHA256 over the canonical JSON of ``content`` (sorted keys, no spaces)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signed(content: dict) -> dict:
    key = signing_key()
    return content if key is None else {**content, "signature": signature(content, key)}


def check(raw: dict, where: str, rerun: str) -> None:
    """Where a key is configured, ``raw`` must carry its valid signature; without one, nothing is checked."""
    key = signing_key()
    if key is None:
        return
    found = raw.get("signature")
    content = {k: v for k, v in raw.items() if k != "signature"}
    if not isinstance(found, str):
        raise PipelineError(f"{where}: not signed, and a signing key is set ({ENV} or {key_file()}); {rerun}")
    if not hmac.compare_digest(found, signature(content, key)):
        raise PipelineError(
            f"{where}: its signature does not match its content (edited since it was written?); {rerun}"
        )
