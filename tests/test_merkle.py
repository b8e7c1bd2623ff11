"""RFC 9162 Merkle trees: published RFC 6962 vectors, a naive reference, and proof properties."""

from __future__ import annotations

import doctest
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aarm_runtime import merkle
from aarm_runtime.merkle import (
    EMPTY_ROOT,
    InvalidProofError,
    MerkleAccumulator,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

# RFC 6962 reference data as published in transparency-dev/merkle
# (testonly/constants.go, proof/verify_test.go): leaf inputs, then the root for
# each tree size 0..8.
LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
LEAVES = [leaf_hash(x) for x in LEAF_INPUTS]


def _h(*hexes: str) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(x) for x in hexes)


# (0-based leaf index, tree size, audit path); upstream numbers leaves from 1.
INCLUSION_VECTORS = [
    (0, 1, ()),
    (
        0,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

CONSISTENCY_VECTORS = [
    (1, 1, ()),
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


# --- an obviously-right reference, straight from RFC 9162 §2.1 ----------------


def ref_mth(data: list[bytes]) -> bytes:
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(data[:k]) + ref_mth(data[k:])).digest()


def ref_path(m: int, data: list[bytes]) -> list[bytes]:
    n = len(data)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, data[:k]) + [ref_mth(data[k:])]
    return ref_path(m - k, data[k:]) + [ref_mth(data[:k])]


def ref_subproof(m: int, data: list[bytes], b: bool) -> list[bytes]:
    n = len(data)
    if m == n:
        return [] if b else [ref_mth(data)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, data[:k], b) + [ref_mth(data[k:])]
    return ref_subproof(m - k, data[k:], False) + [ref_mth(data[:k])]


# --- published vectors --------------------------------------------------------


def test_empty_root() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([]) == EMPTY_ROOT
    assert MerkleAccumulator().root() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(9))
def test_published_roots(size: int) -> None:
    assert root(LEAVES[:size]) == ROOTS[size]
    assert ref_mth(LEAF_INPUTS[:size]) == ROOTS[size]


def test_accumulator_matches_published_roots() -> None:
    acc = MerkleAccumulator()
    for i, h in enumerate(LEAVES):
        assert acc.append(h) == i
        assert acc.size == i + 1
        assert acc.root() == ROOTS[i + 1]
        assert len(acc.peaks) == bin(acc.size).count("1")


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_published_inclusion_proofs(index: int, size: int, proof: tuple[bytes, ...]) -> None:
    assert inclusion_proof(index, size, LEAVES) == proof
    verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])


def _inclusion_probes(index: int, size: int, proof: tuple[bytes, ...], good_root: bytes, leaf: bytes):
    # The corruptions transparency-dev/merkle's verifier tests apply.
    yield "index - 1", (leaf, index - 1, size, proof, good_root)
    yield "index + 1", (leaf, index + 1, size, proof, good_root)
    yield "index ^ 2", (leaf, index ^ 2, size, proof, good_root)
    yield "size * 2", (leaf, index, size * 2, proof, good_root)
    yield "size // 2", (leaf, index, size // 2, proof, good_root)
    yield "wrong leaf", (SOME_HASH, index, size, proof, good_root)
    yield "empty root", (leaf, index, size, proof, EMPTY_ROOT)
    yield "random root", (leaf, index, size, proof, SOME_HASH)
    yield "trailing root", (leaf, index, size, proof + (good_root,), good_root)
    yield "trailing empty", (leaf, index, size, proof + (b"",), good_root)
    yield "preceding root", (leaf, index, size, (good_root,) + proof, good_root)
    yield "preceding empty", (leaf, index, size, (b"",) + proof, good_root)
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        yield f"flipped proof[{i}]", (leaf, index, size, tuple(bad), good_root)
    if proof:
        yield "removed last", (leaf, index, size, proof[:-1], good_root)
    if len(proof) > 1:
        yield "inserted", (leaf, index, size, (proof[0], SOME_HASH) + proof[1:], good_root)


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_corrupted_inclusion_proofs_fail(index: int, size: int, proof: tuple[bytes, ...]) -> None:
    for name, args in _inclusion_probes(index, size, proof, ROOTS[size], LEAVES[index]):
        with pytest.raises(InvalidProofError):
            verify_inclusion(*args)
            pytest.fail(f"probe `{name}` verified")


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY_VECTORS)
def test_published_consistency_proofs(first: int, second: int, proof: tuple[bytes, ...]) -> None:
    assert consistency_proof(first, second, LEAVES) == proof
    verify_consistency(first, second, proof, ROOTS[first], ROOTS[second])


@pytest.mark.parametrize(("first", "second", "proof"), [v for v in CONSISTENCY_VECTORS if v[2]])
def test_corrupted_consistency_proofs_fail(first: int, second: int, proof: tuple[bytes, ...]) -> None:
    r1, r2 = ROOTS[first], ROOTS[second]
    probes = [
        (first - 1, second, proof, r1, r2),
        (first + 1, second, proof, r1, r2),
        (first ^ 2, second, proof, r1, r2),
        (first, second * 2, proof, r1, r2),
        (first, second // 2, proof, r1, r2),
        (first, second, proof, SOME_HASH, r2),
        (first, second, proof, r1, SOME_HASH),
        (first, second, proof, r2, r1),
        (first, second, (), r1, r2),
        (first, second, proof + (r1,), r1, r2),
        (first, second, proof + (r2,), r1, r2),
        (first, second, proof + (b"",), r1, r2),
        (first, second, (r1,) + proof, r1, r2),
        (first, second, (r2,) + proof, r1, r2),
        (first, second, (proof[0],) + proof, r1, r2),
        (first, second, proof[:-1], r1, r2),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((first, second, tuple(bad), r1, r2))
    for args in probes:
        with pytest.raises(InvalidProofError):
            verify_consistency(*args)
            pytest.fail(f"probe {args[:2]} verified")


def test_trivial_consistency() -> None:
    verify_consistency(0, 0, (), EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 5, (), EMPTY_ROOT, ROOTS[5])
    verify_consistency(3, 3, (), ROOTS[3], ROOTS[3])
    with pytest.raises(InvalidProofError, match="roots differ"):
        verify_consistency(3, 3, (), ROOTS[3], ROOTS[4])
    with pytest.raises(InvalidProofError, match="must be empty"):
        verify_consistency(3, 3, (EMPTY_ROOT,), ROOTS[3], ROOTS[3])
    with pytest.raises(InvalidProofError, match="must be empty"):
        verify_consistency(0, 1, (EMPTY_ROOT,), EMPTY_ROOT, ROOTS[1])
    with pytest.raises(InvalidProofError, match="empty-tree root"):
        verify_consistency(0, 1, (), SOME_HASH, ROOTS[1])
    with pytest.raises(InvalidProofError, match="not between"):
        verify_consistency(2, 1, (), ROOTS[2], ROOTS[1])
    with pytest.raises(InvalidProofError, match="empty consistency proof"):
        verify_consistency(1, 2, (), ROOTS[1], ROOTS[2])


def test_single_leaf_inclusion() -> None:
    h = leaf_hash(b"data")
    verify_inclusion(h, 0, 1, (), h)
    with pytest.raises(InvalidProofError, match="32-byte"):
        verify_inclusion(b"", 0, 1, (), h)
    with pytest.raises(InvalidProofError, match="32-byte"):
        verify_inclusion(h, 0, 1, (), b"")


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (-1, 1)])
def test_inclusion_out_of_range(index: int, size: int) -> None:
    with pytest.raises(InvalidProofError, match="outside a tree"):
        verify_inclusion(SOME_HASH, index, size, (), EMPTY_ROOT)
    with pytest.raises(ValueError, match="outside a tree"):
        inclusion_proof(index, size, LEAVES)


def test_generation_argument_errors() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        inclusion_proof(0, 9, LEAVES)
    with pytest.raises(ValueError, match="first size <= second size"):
        consistency_proof(5, 4, LEAVES)
    with pytest.raises(ValueError, match="32-byte"):
        root([b"short"])
    with pytest.raises(ValueError, match="32-byte"):
        MerkleAccumulator().append(b"short")
    with pytest.raises(ValueError, match="no last leaf"):
        MerkleAccumulator().last_inclusion_proof()


def test_bool_sizes_are_not_integers() -> None:
    with pytest.raises(InvalidProofError, match="integers"):
        root_from_inclusion_proof(LEAVES[0], False, True, ())
    with pytest.raises(InvalidProofError, match="integer"):
        verify_consistency(True, 1, (), ROOTS[1], ROOTS[1])


# --- properties against the reference ----------------------------------------

_trees = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@settings(max_examples=60, deadline=None)
@given(_trees)
def test_every_inclusion_proof_verifies_and_matches_the_reference(data: list[bytes]) -> None:
    leaves = [leaf_hash(d) for d in data]
    n = len(leaves)
    r = root(leaves)
    assert r == ref_mth(data)
    for i in range(n):
        proof = inclusion_proof(i, n, leaves)
        assert list(proof) == ref_path(i, data)
        verify_inclusion(leaves[i], i, n, proof, r)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70, unique=True), st.data())
def test_flipping_any_byte_of_an_inclusion_proof_fails(data: list[bytes], draw: st.DataObject) -> None:
    leaves = [leaf_hash(d) for d in data]
    n = len(leaves)
    i = draw.draw(st.integers(0, n - 1))
    proof = inclusion_proof(i, n, leaves)
    r = root(leaves)
    for j, node in enumerate(proof):
        for pos in range(len(node)):
            bad = proof[:j] + (node[:pos] + bytes([node[pos] ^ 0x01]) + node[pos + 1 :],) + proof[j + 1 :]
            with pytest.raises(InvalidProofError):
                verify_inclusion(leaves[i], i, n, bad, r)
    if n > 1:
        # Leaves are distinct, so the same proof cannot place the leaf elsewhere.
        with pytest.raises(InvalidProofError):
            verify_inclusion(leaves[i], (i + 1) % n, n, proof, r)


@settings(max_examples=60, deadline=None)
@given(_trees)
def test_every_consistency_proof_verifies_and_matches_the_reference(data: list[bytes]) -> None:
    leaves = [leaf_hash(d) for d in data]
    n = len(leaves)
    roots = [root(leaves[:m]) for m in range(n + 1)]
    for m in range(0, n + 1):
        proof = consistency_proof(m, n, leaves)
        if 0 < m < n:
            assert list(proof) == ref_subproof(m, data, True)
        else:
            assert proof == ()
        verify_consistency(m, n, proof, roots[m], roots[n])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=2, max_size=70), st.data())
def test_flipping_any_byte_of_a_consistency_proof_fails(data: list[bytes], draw: st.DataObject) -> None:
    leaves = [leaf_hash(d) for d in data]
    n = len(leaves)
    m = draw.draw(st.integers(1, n - 1))
    proof = consistency_proof(m, n, leaves)
    r1, r2 = root(leaves[:m]), root(leaves)
    for j, node in enumerate(proof):
        for pos in range(len(node)):
            bad = proof[:j] + (node[:pos] + bytes([node[pos] ^ 0x80]) + node[pos + 1 :],) + proof[j + 1 :]
            with pytest.raises(InvalidProofError):
                verify_consistency(m, n, bad, r1, r2)
    # A different prefix of the same length is inconsistent with the second tree.
    forged = list(leaves[:m])
    forged[-1] = leaf_hash(b"forged" + data[m - 1])
    with pytest.raises(InvalidProofError):
        verify_consistency(m, n, proof, root(forged), r2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300))
def test_accumulator_tracks_root_and_last_proof(n: int) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    acc = MerkleAccumulator()
    for size in range(1, n + 1):
        acc.append(leaves[size - 1])
        if size in (1, 2, 3, n) or size % 17 == 0:
            assert acc.root() == root(leaves[:size])
            assert acc.last_inclusion_proof() == inclusion_proof(size - 1, size, leaves)
    verify_inclusion(leaves[-1], n - 1, n, acc.last_inclusion_proof(), acc.root())


def test_doctests() -> None:
    assert doctest.testmod(merkle).failed == 0
