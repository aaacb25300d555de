"""Optional HMAC-SHA256 message signing with key rotation.

Sign with the first key of ``BILLQ_SIGNING_KEYS``; accept a signature made with any
listed key, so keys rotate by prepending the new one, deploying, then dropping the old.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from shared.errors import BadSignature

SIGNATURE_HEADER = "x-billq-signature"
_PREFIX = "v1="


def sign(body: bytes, key: bytes) -> str:
    return _PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(body: bytes, headers: Mapping[str, Any], keys: Sequence[bytes]) -> None:
    """Raises BadSignature unless a listed key signed ``body``."""
    value = headers.get(SIGNATURE_HEADER)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or not value.startswith(_PREFIX):
        raise BadSignature("message is not signed")
    if not any(hmac.compare_digest(value, sign(body, k)) for k in keys):
        raise BadSignature("message signature does not verify")
