"""Settlement files (clients/src/settlement_cli.rs): terminals and shops seal
account or card numbers under the brand's settlement public key, client side,
into sealed blobs (proto/src/blob.rs), one base64 line each; the clearing house
streams such a file through DecryptStream and gets one result per line, a line
that fails not stopping the others."""

from __future__ import annotations

import base64
import binascii
import collections
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Iterable, Iterator, Optional, Tuple, Union

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from . import pb
from .client import Client
from .errors import BrandKmsError, code_name, status_code

MAGIC = b"BKS1"
MAX_CIPHERTEXT = 1024
OAEP_SHA1 = 1
OAEP_SHA256 = 2
_ALIAS = re.compile(rb"[a-z0-9._-]{1,64}")


class BlobError(BrandKmsError):
    """Bytes that are not a sealed blob."""


@dataclass(frozen=True)
class SealedBlob:
    """A value sealed under a settlement public key, naming the key's alias and
    version. Layout (big-endian): magic ``BKS1``, alias length (1 byte), alias,
    version (4 bytes), OAEP hash (1: SHA-1, 2: SHA-256), ciphertext length
    (2 bytes), ciphertext."""

    alias: str
    version: int
    oaep_hash: int
    ciphertext: bytes = field(repr=False)

    def encode(self) -> bytes:
        """The blob's bytes."""
        alias = self.alias.encode("ascii", "replace")
        if not _ALIAS.fullmatch(alias):
            raise BlobError("sealed blob: bad alias")
        if not 1 <= self.version < 2**32:
            raise BlobError("sealed blob: version 0")
        if self.oaep_hash not in (OAEP_SHA1, OAEP_SHA256):
            raise BlobError("sealed blob: unknown OAEP hash")
        if not 1 <= len(self.ciphertext) <= MAX_CIPHERTEXT:
            raise BlobError("sealed blob: bad or truncated ciphertext length")
        return (
            MAGIC
            + bytes([len(alias)])
            + alias
            + self.version.to_bytes(4, "big")
            + bytes([self.oaep_hash])
            + len(self.ciphertext).to_bytes(2, "big")
            + self.ciphertext
        )

    @classmethod
    def decode(cls, data: bytes) -> "SealedBlob":
        """Parses a blob; every byte must belong to it."""
        if not data.startswith(MAGIC):
            raise BlobError("not a sealed blob (magic BKS1 missing)")
        rest = data[4:]
        if not rest:
            raise BlobError("sealed blob: bad alias")
        n, rest = rest[0], rest[1:]
        alias, rest = rest[:n], rest[n:]
        if len(alias) != n or not _ALIAS.fullmatch(alias):
            raise BlobError("sealed blob: bad alias")
        if len(rest) < 4 or int.from_bytes(rest[:4], "big") == 0:
            raise BlobError("sealed blob: version 0")
        version, rest = int.from_bytes(rest[:4], "big"), rest[4:]
        if not rest or rest[0] not in (OAEP_SHA1, OAEP_SHA256):
            raise BlobError("sealed blob: unknown OAEP hash")
        oaep_hash, rest = rest[0], rest[1:]
        if len(rest) < 2:
            raise BlobError("sealed blob: bad or truncated ciphertext length")
        length, ciphertext = int.from_bytes(rest[:2], "big"), rest[2:]
        if not 1 <= length <= MAX_CIPHERTEXT or len(ciphertext) != length:
            raise BlobError("sealed blob: bad or truncated ciphertext length")
        return cls(alias.decode("ascii"), version, oaep_hash, bytes(ciphertext))


def seal(public: "pb.PublicKey", plaintext: bytes) -> bytes:
    """Seals ``plaintext`` for the settlement key ``public`` (as GetPublicKey
    reported it): RSA-OAEP with the key's hash, client side, in a blob naming the
    alias and version (what ``terminal seal`` does)."""
    key = serialization.load_der_public_key(public.spki_der)
    if not isinstance(key, rsa.RSAPublicKey):
        raise BlobError("settlement public key: not RSA")
    if public.oaep_hash == pb.OAEP_HASH_SHA256:
        algorithm: hashes.HashAlgorithm = hashes.SHA256()
        code = OAEP_SHA256
    elif public.oaep_hash == pb.OAEP_HASH_SHA1:
        algorithm, code = hashes.SHA1(), OAEP_SHA1
    else:
        raise BlobError("settlement public key: unknown OAEP hash")
    ciphertext = key.encrypt(
        plaintext, padding.OAEP(mgf=padding.MGF1(algorithm=algorithm), algorithm=algorithm, label=None)
    )
    return SealedBlob(public.alias, public.version, code, ciphertext).encode()


@dataclass(frozen=True)
class LineResult:
    """One line's outcome: its plaintext, or why there is none. ``code`` is the
    gRPC status code's name (``InvalidArgument``, ``PermissionDenied``, ...),
    ``reason`` a policy refusal's rule code. The plaintext is kept out of the
    repr."""

    line: int
    plaintext: Optional[bytes] = field(default=None, repr=False)
    code: Optional[str] = None
    message: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether the line decrypted."""
        return self.plaintext is not None

    def describe_error(self) -> str:
        """``InvalidArgument: decryption failed`` (with the reason, if any)."""
        text = f"{self.code}: {self.message}" if self.code else self.message
        if self.reason and self.reason not in self.message:
            text += f" (reason {self.reason})"
        return text


def decrypt_lines(client: Client, lines: Iterable[str]) -> Iterator[LineResult]:
    """Decrypts settlement lines (one base64 sealed blob each, numbered from 1)
    through DecryptStream; yields one LineResult per line, in line order. A line
    that is not base64 fails here without being sent. Lines are read as the
    stream consumes them, so memory stays bounded."""
    local: Deque[LineResult] = collections.deque()

    def items() -> Iterator[Tuple[int, bytes]]:
        for n, line in enumerate(lines, start=1):
            try:
                blob = base64.b64decode(line.strip(), validate=True)
            except (binascii.Error, ValueError):
                local.append(LineResult(n, code="InvalidArgument", message="not base64"))
                continue
            yield n, blob

    for r in client.decrypt_stream(items()):
        # Results come in order, and line r.index was read before it was sent:
        # every local failure before it is already queued.
        while local and local[0].line < r.index:
            yield local.popleft()
        kind = r.WhichOneof("result")
        if kind == "plaintext":
            yield LineResult(r.index, plaintext=r.plaintext)
        elif kind == "error":
            code = status_code(r.error.code)
            yield LineResult(
                r.index,
                code=code_name(code) if code else str(r.error.code),
                message=r.error.message,
                reason=r.error.reason,
            )
        else:
            yield LineResult(r.index, code="Unknown", message="no result")
    while local:
        yield local.popleft()


def decrypt_file(client: Client, path: Union[str, "os.PathLike[str]"]) -> Iterator[LineResult]:
    """decrypt_lines over a settlement file (the format ``terminal seal`` writes
    and ``clearing decrypt`` reads)."""
    with open(Path(path), encoding="utf-8", errors="replace") as f:
        yield from decrypt_lines(client, f)
