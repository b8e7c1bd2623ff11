"""Ed25519 keys for signed policy artifacts and receipts (PyNaCl underneath).

File formats
------------
* Private key file: exactly the 32-byte Ed25519 seed (RFC 8032 secret key),
  raw, created with mode 0600. `load_signing_key` refuses a file that group or
  others can read, write or execute, or one of any other length.
* Public key file: the 32-byte public key as 64 lowercase hex digits followed
  by a newline, so it can be pasted, diffed and checked in.
  `load_verify_key` also accepts the raw 32 bytes (and surrounding whitespace
  around the hex form).

Key id
------
`kid` is the RFC 9679 COSE Key Thumbprint: SHA-256 over the deterministic
CBOR of the required OKP parameters ``{1: 1, -1: 6, -2: x}`` (kty OKP, crv
Ed25519, x = public key). Verifiers look keys up by this id in their own trust
store; a message never supplies its own key.

>>> sk = SigningKey.from_seed(bytes(32))
>>> sk.verify_key.hex()
'3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29'
>>> sk.verify_key.verify(b"msg", sk.sign(b"msg"))
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import os
import stat
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing

from aarm_runtime import dcbor

__all__ = [
    "InvalidKeyError",
    "InvalidSignature",
    "KeyFileError",
    "SEED_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "SigningKey",
    "VerifyKey",
    "generate_keypair",
    "kid",
    "load_signing_key",
    "load_verify_key",
]

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# RFC 9052 / RFC 9053 key parameters used by the thumbprint.
_KTY = 1
_KTY_OKP = 1
_OKP_CRV = -1
_CRV_ED25519 = 6
_OKP_X = -2

# Longest public key file we bother reading: hex plus generous whitespace.
_MAX_PUBLIC_FILE = 256


class InvalidKeyError(ValueError):
    """Key material has the wrong size or type."""


class KeyFileError(Exception):
    """A key file cannot be used: missing, unsafe permissions, or wrong content."""


class InvalidSignature(Exception):
    """An Ed25519 signature does not verify under the given key."""


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyKey:
    """An Ed25519 public key; compares and hashes by its 32 bytes."""

    public_bytes: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.public_bytes, bytes):
            raise InvalidKeyError(f"public key must be bytes, got `{type(self.public_bytes).__name__}`")
        if len(self.public_bytes) != PUBLIC_KEY_SIZE:
            raise InvalidKeyError(
                f"ed25519 public key must be {PUBLIC_KEY_SIZE} bytes, got {len(self.public_bytes)}"
            )

    @classmethod
    def from_hex(cls, text: str) -> VerifyKey:
        try:
            raw = bytes.fromhex(text.strip())
        except ValueError:
            raise InvalidKeyError("public key text is not hex") from None
        return cls(raw)

    def hex(self) -> str:
        return self.public_bytes.hex()

    @property
    def kid(self) -> bytes:
        return kid(self)

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check a pure Ed25519 (RFC 8032) signature; raise `InvalidSignature` if it does not hold."""
        if len(signature) != SIGNATURE_SIZE:
            raise InvalidSignature(f"ed25519 signature must be {SIGNATURE_SIZE} bytes, got {len(signature)}")
        try:
            # libsodium's one-shot crypto_sign_open: pure Ed25519, as nacl.signing.VerifyKey.verify.
            nacl.bindings.crypto_sign_open(bytes(signature) + bytes(message), self.public_bytes)
        except nacl.exceptions.BadSignatureError:
            raise InvalidSignature("ed25519 signature does not verify") from None


class SigningKey:
    """An Ed25519 private key held as its 32-byte seed; never printed."""

    __slots__ = ("_kid", "_nacl", "_secret", "_verify_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes):
            raise InvalidKeyError(f"seed must be bytes, got `{type(seed).__name__}`")
        if len(seed) != SEED_SIZE:
            raise InvalidKeyError(f"ed25519 seed must be {SEED_SIZE} bytes, got {len(seed)}")
        self._nacl = nacl.signing.SigningKey(seed)
        self._verify_key = VerifyKey(self._nacl.verify_key.encode())
        # libsodium's 64-byte secret key (seed ‖ public key), for the one-shot call without PyNaCl's wrappers.
        self._secret = nacl.bindings.crypto_sign_seed_keypair(seed)[1]
        self._kid = kid(self._verify_key)

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        return cls(seed)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(SEED_SIZE))

    @property
    def seed(self) -> bytes:
        return self._nacl.encode()

    @property
    def verify_key(self) -> VerifyKey:
        return self._verify_key

    @property
    def kid(self) -> bytes:
        return self._kid

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte pure Ed25519 signature of *message*.

        libsodium's one-shot ``crypto_sign`` is pure Ed25519 (what PyNaCl's
        ``SigningKey.sign`` calls); its multi-part API would be Ed25519ph and
        verify nowhere else.
        """
        return nacl.bindings.crypto_sign(bytes(message), self._secret)[:SIGNATURE_SIZE]

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid.hex()})"


def kid(verify_key: VerifyKey) -> bytes:
    """RFC 9679 COSE Key Thumbprint (SHA-256) of an Ed25519 public key."""
    cose_key = {_KTY: _KTY_OKP, _OKP_CRV: _CRV_ED25519, _OKP_X: verify_key.public_bytes}
    return hashlib.sha256(dcbor.encode(cose_key)).digest()


def generate_keypair(path_private: str | os.PathLike[str], path_public: str | os.PathLike[str]) -> SigningKey:
    """Create a fresh key pair; the private file is born 0600 and neither file may exist yet.

    If the public file cannot be created, the new private file is removed so
    that no orphan key is left behind.
    """
    path_private = Path(path_private)
    path_public = Path(path_public)
    if path_public.exists() or path_public.is_symlink():
        raise KeyFileError(f"public key file `{path_public}` already exists; refusing to overwrite it")
    key = SigningKey.generate()
    _write_new_file(path_private, key.seed, 0o600, what="private key")
    try:
        _write_new_file(path_public, (key.verify_key.hex() + "\n").encode("ascii"), 0o644, what="public key")
    except BaseException:
        path_private.unlink(missing_ok=True)
        raise
    return key


def _write_new_file(path: Path, content: bytes, mode: int, *, what: str) -> None:
    # O_EXCL: the file is created by this call with *mode* from the start, so
    # there is no window in which a private key sits in a world-readable file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(f"{what} file `{path}` already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {what} file `{path}`: {exc.strerror}") from None
    try:
        # The umask can only remove bits; fchmod makes the mode exact either way.
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_limited(path: Path, limit: int, *, what: str) -> tuple[bytes, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise KeyFileError(f"{what} file `{path}` does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open {what} file `{path}`: {exc.strerror}") from None
    try:
        # fstat on the open descriptor: the checked file is the one we read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} file `{path}` is not a regular file")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load a private key file (raw 32-byte seed) that only its owner can access."""
    path = Path(path)
    data, st = _read_limited(path, SEED_SIZE, what="private key")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        raise KeyFileError(
            f"private key file `{path}` has mode {stat.S_IMODE(st.st_mode):04o} and is accessible by "
            f"{_who(loose)}; run `chmod 600 {path}`"
        )
    if len(data) != SEED_SIZE:
        size = f"{len(data)}" if len(data) <= SEED_SIZE else f"more than {SEED_SIZE}"
        raise KeyFileError(
            f"private key file `{path}` holds {size} bytes; expected the {SEED_SIZE}-byte raw ed25519 seed"
        )
    return SigningKey(data)


def _who(bits: int) -> str:
    parts = []
    if bits & 0o070:
        parts.append("group")
    if bits & 0o007:
        parts.append("others")
    return " and ".join(parts)


def load_verify_key(path: str | os.PathLike[str]) -> VerifyKey:
    """Load a public key file: 64 hex digits (whitespace allowed around them) or 32 raw bytes."""
    path = Path(path)
    data, _ = _read_limited(path, _MAX_PUBLIC_FILE, what="public key")
    if len(data) > _MAX_PUBLIC_FILE:
        raise KeyFileError(f"public key file `{path}` is too large to be an ed25519 public key")
    stripped = data.strip()
    if len(stripped) == 2 * PUBLIC_KEY_SIZE:
        try:
            return VerifyKey(binascii.unhexlify(stripped))
        except binascii.Error:
            pass  # 64 bytes that are not hex: maybe not text at all, fall through
    if len(data) == PUBLIC_KEY_SIZE:
        return VerifyKey(data)
    raise KeyFileError(
        f"public key file `{path}` is neither {2 * PUBLIC_KEY_SIZE} hex digits nor {PUBLIC_KEY_SIZE} raw bytes "
        f"({len(data)} bytes found)"
    )
