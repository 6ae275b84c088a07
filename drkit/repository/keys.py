"""Envelope encryption of the repository master key.

The 32-byte master key is random and stored only wrapped, in ``keys/<id>`` objects.  A wrapping
key comes from one of:

- a key file (``encryption.key_file``) or an environment variable (``encryption.key_env``): the
  secret is stretched with scrypt (salted per envelope) into a 256-bit wrapping key;
- AWS KMS (``encryption.kms_key_id``): ``GenerateDataKey`` gives a data key that wraps the master
  key; the envelope stores KMS's ciphertext blob, which only ``kms:Decrypt`` (with the repository
  id as encryption context) turns back into the data key.

Rotating the wrapping key writes a new envelope and removes the old one; no data is rewritten.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any, Protocol

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


def encode_envelope(envelope: dict[str, Any]) -> bytes:
    return json.dumps({"version": 1, **envelope}, sort_keys=True).encode()


def decode_envelope(data: bytes) -> dict[str, Any]:
    return json.loads(data)
