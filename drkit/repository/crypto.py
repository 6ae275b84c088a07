"""Authenticated encryption and keyed hashing for the repository.

Everything stored (chunks, index files, manifests, log records) is sealed the same way::

    sealed = MAGIC(4) | salt(16, random) | AES-256-GCM(k, nonce=0^96, plaintext, aad)
    k      = BLAKE3-keyed(key=enc_key, salt)          # a fresh key for every object

Because each seal derives a fresh one-time key from a 128-bit random salt, a (key, nonce) pair
is never used twice -- no counter to persist and no birthday bound at 2^32 messages.  The
associated data names what the object is (``blob:<id>``, ``index:<name>``, ...), so an object
that was swapped, moved, truncated or replayed under another name fails to decrypt.

Chunk ids are BLAKE3 keyed with ``id_key``: identical plaintext maps to the same id inside one
repository (dedup), and ids reveal nothing without the key.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from drkit.errors import IntegrityError

MAGIC = b"DRK1"
SALT_LEN = 16
TAG_LEN = 16
OVERHEAD = len(MAGIC) + SALT_LEN + TAG_LEN
_ZERO_NONCE = bytes(12)


def _derive(master: bytes, context: str) -> bytes:
    return blake3.blake3(master, derive_key_context=f"drkit 2026 {context}").digest(32)


@dataclass(frozen=True)
class Keys:
    """The subkeys derived from the 32-byte repository master key."""

    enc: bytes
    ident: bytes
    mac: bytes
    chunker_seed: int

    @classmethod
    def from_master(cls, master: bytes) -> Keys:
        if len(master) != 32:
            raise ValueError("master key must be 32 bytes")
        seed_bytes = _derive(master, "chunker seed")[:8]
        return cls(
            enc=_derive(master, "encryption"),
            ident=_derive(master, "chunk id"),
            mac=_derive(master, "config mac"),
            chunker_seed=int.from_bytes(seed_bytes, "little") & ((1 << 63) - 1),
        )

    def __repr__(self) -> str:  # never print key material
        return "Keys(***)"

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self.ident).digest()

    def stream_digest(self, chunk_ids_hex: list[str], size: int) -> str:
        """A stream's digest: keyed BLAKE3 over its size and its chunk ids in order.

        Each chunk id is itself the keyed BLAKE3 of the chunk, so this commits to every byte of
        the stream without hashing the stream a second time on one thread.
        """
        h = blake3.blake3(size.to_bytes(8, "little"), key=self.ident)
        for cid in chunk_ids_hex:
            h.update(bytes.fromhex(cid))
        return h.hexdigest()

    def mac_of(self, data: bytes) -> str:
        return blake3.blake3(data, key=self.mac).hexdigest()

    def check_mac(self, data: bytes, mac: str) -> bool:
        return hmac.compare_digest(self.mac_of(data), mac)

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        salt = os.urandom(SALT_LEN)
        key = blake3.blake3(salt, key=self.enc).digest(32)
        return MAGIC + salt + AESGCM(key).encrypt(_ZERO_NONCE, bytes(plaintext), aad)

    def seal_parts(self, head: bytes, body: bytes | memoryview, aad: bytes) -> bytes:
        """:meth:`seal` of ``head + body``, encrypting straight into the sealed object's buffer."""
        plaintext = head + body if head else body
        salt = os.urandom(SALT_LEN)
        key = blake3.blake3(salt, key=self.enc).digest(32)
        out = bytearray(OVERHEAD + len(plaintext))
        out[:4] = MAGIC
        out[4 : 4 + SALT_LEN] = salt
        AESGCM(key).encrypt_into(_ZERO_NONCE, plaintext, aad, memoryview(out)[4 + SALT_LEN :])
        return out  # type: ignore[return-value]  # a bytearray: bytes-like, one copy fewer

    def open(self, sealed: bytes | memoryview, aad: bytes, *, what: str) -> bytes:
        """Decrypt and authenticate; raise :class:`IntegrityError` naming ``what`` on failure."""
        view = memoryview(sealed)
        if len(view) < OVERHEAD or view[:4] != MAGIC:
            raise IntegrityError(f"{what}: not a drkit object or truncated", key=what)
        key = blake3.blake3(view[4 : 4 + SALT_LEN], key=self.enc).digest(32)
        try:
            return AESGCM(key).decrypt(_ZERO_NONCE, view[4 + SALT_LEN :], aad)
        except InvalidTag:
            raise IntegrityError(
                f"{what}: authentication failed (corrupted, truncated, or not the object it "
                "claims to be)",
                key=what,
            ) from None


def random_hex(nbytes: int = 16) -> str:
    return os.urandom(nbytes).hex()
