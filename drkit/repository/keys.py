"""Envelope encryption of the repository master key.

The 32-byte master key is random and stored only wrapped, in ``keys/<id>`` objects.  A wrapping
key comes from one of:

- a key file (``encryption.key_file``) or an environment variable (``encryption.key_env``): the
  secret is stretched with scrypt (salted per envelope) into a 256-bit wrapping key;
- AWS KMS (``encryption.kms_key_id``): ``GenerateDataKey`` gives a data key that wraps the master
  key; the envelope stores KMS's ciphertext blob, which only ``kms:Decrypt`` (with the repository
  id as encryption context) turns back into the data key.

Rotating the wrapping key writes a new envelope and removes the old one; no data is rewritten.

An envelope is plaintext JSON.  Since it may be damaged like any stored object, it is checked
before use (:func:`parse_envelope`): its structure, and -- for envelopes written by this drkit --
its ``check`` field, an unkeyed BLAKE3 of the canonical JSON of the other fields.  The check only
detects accidental damage (anyone who can write ``keys/`` can recompute it); it is what tells
damage to the wrapped bytes apart from a wrong key, which AES-GCM alone cannot.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from drkit.config import EncryptionConfig, Secret
from drkit.errors import ConfigError, WrongKey

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode())


def _aad(repo_id: str, key_id: str) -> bytes:
    return f"drkit-key:{repo_id}:{key_id}".encode()


class Wrapper(Protocol):
    """Wraps and unwraps the master key."""

    description: str

    def wrap(self, master: bytes, repo_id: str, key_id: str) -> dict[str, Any]: ...

    def unwrap(self, envelope: dict[str, Any], repo_id: str, key_id: str) -> bytes: ...


@dataclass
class SecretWrapper:
    """Wrapping key stretched from a secret (key file or environment variable)."""

    secret: Secret
    description: str
    kind: str
    envelope_kind: ClassVar[str] = "secret"

    def _kek(self, salt: bytes, n: int, r: int, p: int) -> bytes:
        material = self.secret.reveal()
        if isinstance(material, str):
            material = material.encode()
        return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(material)

    def wrap(self, master: bytes, repo_id: str, key_id: str) -> dict[str, Any]:
        salt, nonce = os.urandom(16), os.urandom(12)
        kek = self._kek(salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        wrapped = AESGCM(kek).encrypt(nonce, master, _aad(repo_id, key_id))
        return {
            "kind": "secret",
            "source": self.kind,
            "kdf": {"name": "scrypt", "salt": _b64(salt), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
            "nonce": _b64(nonce),
            "wrapped": _b64(wrapped),
        }

    def unwrap(self, envelope: dict[str, Any], repo_id: str, key_id: str) -> bytes:
        if envelope.get("kind") != "secret":
            raise WrongKey("envelope is not secret-wrapped")
        kdf = envelope["kdf"]
        kek = self._kek(_unb64(kdf["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))
        try:
            return AESGCM(kek).decrypt(
                _unb64(envelope["nonce"]), _unb64(envelope["wrapped"]), _aad(repo_id, key_id)
            )
        except InvalidTag:
            raise WrongKey("key does not match") from None


@dataclass
class KmsWrapper:
    """Wrapping key = an AWS KMS data key (GenerateDataKey / Decrypt)."""

    key_id: str
    endpoint_url: str | None = None
    region: str | None = None
    description: str = "AWS KMS key"
    envelope_kind: ClassVar[str] = "kms"

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        cfg = BotoConfig(retries={"total_max_attempts": 4, "mode": "standard"}, connect_timeout=10, read_timeout=30)
        return boto3.client("kms", endpoint_url=self.endpoint_url, region_name=self.region, config=cfg)

    def wrap(self, master: bytes, repo_id: str, key_id: str) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self._client().generate_data_key(
                KeyId=self.key_id, KeySpec="AES_256", EncryptionContext={"drkit-repository": repo_id}
            )
        except (ClientError, BotoCoreError) as exc:
            raise _kms_error("GenerateDataKey", self.key_id, exc) from None
        nonce = os.urandom(12)
        wrapped = AESGCM(resp["Plaintext"]).encrypt(nonce, master, _aad(repo_id, key_id))
        return {
            "kind": "kms",
            "kms_key_id": self.key_id,
            "kms_blob": _b64(resp["CiphertextBlob"]),
            "nonce": _b64(nonce),
            "wrapped": _b64(wrapped),
        }

    def unwrap(self, envelope: dict[str, Any], repo_id: str, key_id: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if envelope.get("kind") != "kms":
            raise WrongKey("envelope is not KMS-wrapped")
        try:
            resp = self._client().decrypt(
                KeyId=self.key_id,  # insist on the configured key, not whatever the blob names
                CiphertextBlob=_unb64(envelope["kms_blob"]),
                EncryptionContext={"drkit-repository": repo_id},
            )
        except (ClientError, BotoCoreError) as exc:
            raise _kms_error("Decrypt", self.key_id, exc) from None
        try:
            return AESGCM(resp["Plaintext"]).decrypt(
                _unb64(envelope["nonce"]), _unb64(envelope["wrapped"]), _aad(repo_id, key_id)
            )
        except InvalidTag:
            raise WrongKey("KMS data key does not unwrap the master key") from None


# KMS answers that mean "this key cannot unwrap this envelope"; anything else (throttling, a
# network failure, an outage) is a service problem and must not be reported as a wrong key.
_KMS_KEY_ERRORS = {
    "AccessDeniedException", "IncorrectKeyException", "InvalidCiphertextException",
    "NotFoundException", "DisabledException", "KMSInvalidStateException", "InvalidKeyUsageException",
}


def _kms_error(op: str, key_id: str, exc: Exception) -> Exception:
    from botocore.exceptions import ClientError

    from drkit.errors import StorageError

    code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
    if code in _KMS_KEY_ERRORS:
        return WrongKey(f"KMS {op} with key {key_id} refused: {code}")
    return StorageError(f"KMS {op} with key {key_id} failed ({code or type(exc).__name__}): the key "
                        "service is unavailable; retry later (the repository was not changed)")


def wrapper_from_config(enc: EncryptionConfig) -> Wrapper:
    """Build the wrapper the configuration names, reading the secret now (never logged)."""
    if enc.key_file:
        try:
            data = enc.key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read key file {enc.key_file}: {exc.strerror}") from None
        if len(data) < 16:
            raise ConfigError(f"key file {enc.key_file} holds fewer than 16 bytes; use a longer key")
        return SecretWrapper(Secret(data), f"key file {enc.key_file}", "key_file")
    if enc.key_env:
        value = os.environ.get(enc.key_env)
        if not value:
            raise ConfigError(f"environment variable {enc.key_env} (encryption.key_env) is not set")
        if len(value) < 16:
            raise ConfigError(f"environment variable {enc.key_env} holds fewer than 16 characters")
        return SecretWrapper(Secret(value), f"environment variable {enc.key_env}", "key_env")
    if enc.kms_key_id:
        return KmsWrapper(enc.kms_key_id, enc.kms_endpoint_url, enc.kms_region)
    raise ConfigError("encryption: no key configured")


ENVELOPE_KINDS = ("secret", "kms")

# Bounds on the scrypt parameters an envelope may name: drkit writes n=2^15, r=8, p=1; a damaged
# (or hostile) envelope must not make opening allocate gigabytes or run for minutes.
_SCRYPT_MAX_N, _SCRYPT_MAX_R, _SCRYPT_MAX_P, _SCRYPT_MAX_MEM = 2**20, 32, 16, 1 << 30


class DamagedEnvelope(ValueError):
    """A key envelope that is not what the format defines: not JSON, a missing or ill-typed
    field, bad base64, a wrong length, or a ``check`` that does not match (accidental damage)."""


def envelope_check(envelope: dict[str, Any]) -> str:
    """The ``check`` of an envelope: BLAKE3 (unkeyed, hex) of the canonical JSON of every other
    field (sorted keys, no whitespace, ASCII).  Detects accidental damage only."""
    fields = {k: v for k, v in envelope.items() if k != "check"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return blake3.blake3(canonical.encode()).hexdigest()


def encode_envelope(envelope: dict[str, Any]) -> bytes:
    doc = {"version": 1, **{k: v for k, v in envelope.items() if k != "check"}}
    doc["check"] = envelope_check(doc)
    return json.dumps(doc, sort_keys=True).encode()


def decode_envelope(data: bytes) -> dict[str, Any]:
    """The JSON of an envelope, unchecked (see :func:`parse_envelope`)."""
    return json.loads(data)


def _b64_field(doc: dict[str, Any], name: str, length: int | None = None) -> None:
    value = doc.get(name)
    if not isinstance(value, str):
        raise DamagedEnvelope(f"field {name!r} is missing or not a string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise DamagedEnvelope(f"field {name!r} is not base64") from None
    if not raw or (length is not None and len(raw) != length):
        raise DamagedEnvelope(f"field {name!r} holds {len(raw)} bytes" + (f", not {length}" if length else ""))


def _positive_int(kdf: dict[str, Any], name: str, bound: int) -> int:
    value = kdf.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
        raise DamagedEnvelope(f"scrypt parameter {name!r} is {value!r}, not an integer in 1..{bound}")
    return value


def check_envelope(envelope: Any) -> dict[str, Any]:
    """Return ``envelope`` if it is a well-formed key envelope; else raise DamagedEnvelope
    naming what is wrong (docs/repository-format.md, "Key envelopes")."""
    if not isinstance(envelope, dict):
        raise DamagedEnvelope("not a JSON object")
    if "check" in envelope:
        check = envelope["check"]
        if not isinstance(check, str) or len(check) != 64 or any(c not in "0123456789abcdef" for c in check):
            raise DamagedEnvelope("field 'check' is not 64 lowercase hex digits")
        if check != envelope_check(envelope):
            raise DamagedEnvelope("self-check mismatch: the envelope's bytes changed after it was written")
    if envelope.get("version") != 1:
        raise DamagedEnvelope(f"field 'version' is {envelope.get('version')!r}, not 1")
    kind = envelope.get("kind")
    if kind not in ENVELOPE_KINDS:
        raise DamagedEnvelope(f"field 'kind' is {kind!r}, not one of {', '.join(ENVELOPE_KINDS)}")
    _b64_field(envelope, "nonce", 12)
    _b64_field(envelope, "wrapped", 32 + 16)  # the master key and the GCM tag
    if kind == "secret":
        kdf = envelope.get("kdf")
        if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
            raise DamagedEnvelope("field 'kdf' is not an scrypt description")
        n = _positive_int(kdf, "n", _SCRYPT_MAX_N)
        r = _positive_int(kdf, "r", _SCRYPT_MAX_R)
        _positive_int(kdf, "p", _SCRYPT_MAX_P)
        if n < 2 or n & (n - 1) or 128 * n * r > _SCRYPT_MAX_MEM:
            raise DamagedEnvelope(f"scrypt parameters n={n}, r={r} are not a power of two within 1 GiB")
        _b64_field(kdf, "salt", 16)
        if envelope.get("source") not in ("key_file", "key_env"):
            raise DamagedEnvelope(f"field 'source' is {envelope.get('source')!r}, not key_file or key_env")
    else:
        if not isinstance(envelope.get("kms_key_id"), str) or not envelope["kms_key_id"]:
            raise DamagedEnvelope("field 'kms_key_id' is missing or empty")
        _b64_field(envelope, "kms_blob")
    return envelope


def parse_envelope(data: bytes) -> dict[str, Any]:
    """Decode and check the stored bytes of a key envelope (raises DamagedEnvelope)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedEnvelope(f"not JSON ({len(data)} bytes; {exc})") from None
    return check_envelope(doc)


def inspect_envelope(data: bytes) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the checked envelope, or None if it is damaged; a summary that holds no key material:
    ``kind``, ``source``, ``kms_key_id``, ``self_check``, ``damaged``, ``problem``).  The summary of
    a damaged envelope shows what is still readable of it."""
    try:
        env: dict[str, Any] | None = parse_envelope(data)
        doc: Any = env
        problem = None
    except DamagedEnvelope as exc:
        env, problem = None, str(exc)
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            doc = None
    doc = doc if isinstance(doc, dict) else {}

    def text(name: str) -> str | None:
        value = doc.get(name)
        return value if isinstance(value, str) else None

    summary = {
        "kind": text("kind"), "source": text("source"), "kms_key_id": text("kms_key_id"),
        "self_check": "check" in doc, "damaged": env is None, "problem": problem,
    }
    return env, summary


def could_be_for(kind: str | None, wrapper: Wrapper) -> bool:
    """Whether a (damaged) envelope of ``kind`` could be one ``wrapper`` unwraps: its kind is
    unreadable, unknown, or the wrapper's.  The secret's source (file or variable) does not count:
    the same secret may be configured either way."""
    mine = getattr(wrapper, "envelope_kind", None)
    return kind not in ENVELOPE_KINDS or mine is None or kind == mine
