"""Ed25519 key files, refusal of unsafe ones, and RFC 9679 key thumbprints."""

from __future__ import annotations

import doctest
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aarm_runtime import keys
from aarm_runtime.keys import (
    InvalidKeyError,
    InvalidSignature,
    KeyFileError,
    SigningKey,
    VerifyKey,
    generate_keypair,
    kid,
    load_signing_key,
    load_verify_key,
)

# RFC 8032 §7.1 TEST 1.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_test1() -> None:
    sk = SigningKey.from_seed(RFC8032_SEED)
    assert sk.verify_key.public_bytes == RFC8032_PUBLIC
    assert sk.sign(b"") == RFC8032_SIG_EMPTY
    sk.verify_key.verify(b"", RFC8032_SIG_EMPTY)


def test_signatures_are_pure_ed25519_per_an_independent_implementation() -> None:
    sk = SigningKey.generate()
    message = b"pure ed25519, not ed25519ph"
    signature = sk.sign(message)
    # pyca/cryptography verifies RFC 8032 Ed25519 only; raises on mismatch.
    Ed25519PublicKey.from_public_bytes(sk.verify_key.public_bytes).verify(signature, message)
    theirs = Ed25519PrivateKey.from_private_bytes(sk.seed)
    assert theirs.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == sk.verify_key.public_bytes
    assert theirs.sign(message) == signature


def test_verify_rejects_tampering() -> None:
    sk = SigningKey.generate()
    signature = sk.sign(b"abc")
    with pytest.raises(InvalidSignature):
        sk.verify_key.verify(b"abd", signature)
    with pytest.raises(InvalidSignature):
        sk.verify_key.verify(b"abc", bytes([signature[0] ^ 1]) + signature[1:])
    with pytest.raises(InvalidSignature, match="64 bytes"):
        sk.verify_key.verify(b"abc", signature[:-1])
    with pytest.raises(InvalidSignature):
        SigningKey.generate().verify_key.verify(b"abc", signature)


def _independent_thumbprint(public: bytes) -> bytes:
    # RFC 9679 §3: deterministic CBOR of the required OKP members kty (1) = OKP (1),
    # crv (-1) = Ed25519 (6), x (-2); keys in bytewise order 0x01, 0x20, 0x21.
    assert len(public) == 32
    cose_key = bytes([0xA3, 0x01, 0x01, 0x20, 0x06, 0x21, 0x58, 0x20]) + public
    return hashlib.sha256(cose_key).digest()


def test_kid_is_the_rfc9679_thumbprint() -> None:
    for seed in (RFC8032_SEED, bytes(32), b"\xff" * 32, os.urandom(32)):
        vk = SigningKey.from_seed(seed).verify_key
        assert kid(vk) == _independent_thumbprint(vk.public_bytes)
        assert vk.kid == kid(vk) == SigningKey.from_seed(seed).kid
        assert len(kid(vk)) == 32


def test_kid_differs_per_key() -> None:
    assert kid(VerifyKey(RFC8032_PUBLIC)) != kid(SigningKey.generate().verify_key)


def test_key_material_sizes() -> None:
    with pytest.raises(InvalidKeyError, match="32 bytes, got 31"):
        SigningKey(bytes(31))
    with pytest.raises(InvalidKeyError, match="32 bytes, got 33"):
        VerifyKey(bytes(33))
    with pytest.raises(InvalidKeyError, match="must be bytes"):
        VerifyKey("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match="not hex"):
        VerifyKey.from_hex("zz" * 32)


def test_signing_key_repr_hides_the_seed() -> None:
    sk = SigningKey.from_seed(RFC8032_SEED)
    assert RFC8032_SEED.hex() not in repr(sk)
    assert sk.kid.hex() in repr(sk)


def test_verify_keys_compare_by_value() -> None:
    assert VerifyKey(RFC8032_PUBLIC) == VerifyKey(bytes(RFC8032_PUBLIC))
    assert len({VerifyKey(RFC8032_PUBLIC), VerifyKey.from_hex(RFC8032_PUBLIC.hex())}) == 1


# --- files ---------------------------------------------------------------


def test_generate_round_trip(tmp_path: Path) -> None:
    priv, pub = tmp_path / "k.key", tmp_path / "k.pub"
    sk = generate_keypair(priv, pub)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_bytes() == sk.seed and len(sk.seed) == 32
    assert pub.read_text() == sk.verify_key.hex() + "\n"
    loaded = load_signing_key(priv)
    assert loaded.seed == sk.seed
    assert load_verify_key(pub) == sk.verify_key


def test_generate_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    priv, pub = tmp_path / "k.key", tmp_path / "k.pub"
    priv.write_bytes(b"keep me")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(priv, pub)
    assert priv.read_bytes() == b"keep me"
    assert not pub.exists()


def test_generate_removes_the_private_key_when_the_public_file_fails(tmp_path: Path) -> None:
    priv = tmp_path / "k.key"
    with pytest.raises(KeyFileError, match="cannot create public key file"):
        generate_keypair(priv, tmp_path / "missing-dir" / "k.pub")
    assert not priv.exists()


def test_generate_refuses_existing_public_file(tmp_path: Path) -> None:
    priv, pub = tmp_path / "k.key", tmp_path / "k.pub"
    pub.write_text("x")
    with pytest.raises(KeyFileError, match="public key file .* already exists"):
        generate_keypair(priv, pub)
    assert not priv.exists()


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o640, "group"), (0o604, "others"), (0o644, "group and others"), (0o660, "group"), (0o602, "others"),
     (0o610, "group"), (0o777, "group and others")],
)
def test_load_refuses_group_or_other_access(tmp_path: Path, mode: int, who: str) -> None:
    priv = tmp_path / "k.key"
    priv.write_bytes(RFC8032_SEED)
    priv.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_signing_key(priv)
    message = str(info.value)
    assert f"mode {mode:04o}" in message
    assert f"accessible by {who};" in message
    assert f"run `chmod 600 {priv}`" in message
    priv.chmod(0o600)
    assert load_signing_key(priv).verify_key.public_bytes == RFC8032_PUBLIC


@pytest.mark.parametrize("content", [b"", bytes(31), bytes(33), bytes(64), RFC8032_SEED.hex().encode()])
def test_load_refuses_wrong_length(tmp_path: Path, content: bytes) -> None:
    priv = tmp_path / "k.key"
    priv.write_bytes(content)
    priv.chmod(0o600)
    with pytest.raises(KeyFileError, match="expected the 32-byte raw ed25519 seed"):
        load_signing_key(priv)


def test_load_refuses_missing_and_non_regular(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_signing_key(tmp_path / "nope")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file|cannot open"):
        load_signing_key(d)


def test_load_0400_is_fine(tmp_path: Path) -> None:
    priv = tmp_path / "k.key"
    priv.write_bytes(RFC8032_SEED)
    priv.chmod(0o400)
    assert load_signing_key(priv).seed == RFC8032_SEED


@pytest.mark.parametrize(
    "content",
    [
        RFC8032_PUBLIC,
        RFC8032_PUBLIC.hex().encode(),
        RFC8032_PUBLIC.hex().encode() + b"\n",
        b"  " + RFC8032_PUBLIC.hex().upper().encode() + b"\r\n",
    ],
)
def test_load_verify_key_accepts_raw_and_hex(tmp_path: Path, content: bytes) -> None:
    pub = tmp_path / "k.pub"
    pub.write_bytes(content)
    assert load_verify_key(pub).public_bytes == RFC8032_PUBLIC


@pytest.mark.parametrize("content", [b"", bytes(31), bytes(33), b"zz" * 32, RFC8032_PUBLIC.hex().encode()[:-1], b"0" * 1000])
def test_load_verify_key_rejects_other_content(tmp_path: Path, content: bytes) -> None:
    pub = tmp_path / "k.pub"
    pub.write_bytes(content)
    with pytest.raises(KeyFileError, match="public key file"):
        load_verify_key(pub)


def test_doctests() -> None:
    assert doctest.testmod(keys).failed == 0
