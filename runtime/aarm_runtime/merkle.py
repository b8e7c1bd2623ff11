"""RFC 9162 (Certificate Transparency v2) Merkle trees with SHA-256.

Leaves are hashed as ``SHA-256(0x00 || data)`` and interior nodes as
``SHA-256(0x01 || left || right)``; the split point of a tree of size n is the
largest power of two below n (RFC 9162 §2.1.1), so trees of any size agree with
every other RFC 6962/9162 implementation. The empty tree's root is
``SHA-256("")``.

Proof generation follows the recursive definitions of RFC 9162 §2.1.3.1 (PATH)
and §2.1.4.1 (SUBPROOF); verification follows the iterative algorithms of
§2.1.3.2 and §2.1.4.2 and raises `InvalidProofError` instead of returning a
bool. `MerkleAccumulator` is the log writer's incremental view: O(log n) state,
root and last-leaf inclusion proof for checkpoints.

>>> leaves = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]
>>> proof = inclusion_proof(2, 3, leaves)
>>> verify_inclusion(leaves[2], 2, 3, proof, root(leaves))
>>> acc = MerkleAccumulator()
>>> for h in leaves:
...     _ = acc.append(h)
>>> acc.root() == root(leaves) and acc.last_inclusion_proof() == proof
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "InvalidProofError",
    "MerkleAccumulator",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


class InvalidProofError(ValueError):
    """A Merkle inclusion or consistency proof does not verify."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below *n* (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: object, what: str, exc: type[Exception]) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        size = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise exc(f"{what} must be a {HASH_SIZE}-byte sha-256 hash, got {size}")
    return bytes(value)


def _check_leaves(leaf_hashes: Sequence[bytes], size: int) -> None:
    if size > len(leaf_hashes):
        raise ValueError(f"tree size {size} exceeds the {len(leaf_hashes)} leaf hashes given")
    for i in range(size):
        _check_hash(leaf_hashes[i], f"leaf hash {i}", ValueError)


def _range_root(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    # Peaks fold left to right in O(n) time and O(log n) space; no recursion.
    acc = MerkleAccumulator()
    for i in range(lo, hi):
        acc.append(leaf_hashes[i])
    return acc.root()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash (RFC 9162 §2.1.1) over already-hashed leaves."""
    _check_leaves(leaf_hashes, len(leaf_hashes))
    return _range_root(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(index: int, size: int, leaf_hashes: Sequence[bytes]) -> tuple[bytes, ...]:
    """Audit path of leaf *index* in the tree of the first *size* leaves (RFC 9162 §2.1.3.1), bottom-up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    _check_leaves(leaf_hashes, size)
    siblings: list[bytes] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            siblings.append(_range_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            siblings.append(_range_root(leaf_hashes, lo, lo + k))
            lo += k
            m -= k
    # The loop walks from the root down; proofs list siblings from the leaf up.
    return tuple(reversed(siblings))


def consistency_proof(first_size: int, second_size: int, leaf_hashes: Sequence[bytes]) -> tuple[bytes, ...]:
    """Proof that the tree of size *first_size* is a prefix of the one of size *second_size* (RFC 9162 §2.1.4.1).

    Empty when ``first_size`` is 0 or equal to ``second_size``: those are
    consistent by definition.
    """
    if not 0 <= first_size <= second_size:
        raise ValueError(f"consistency needs 0 <= first size <= second size, got {first_size} and {second_size}")
    _check_leaves(leaf_hashes, second_size)
    if first_size in (0, second_size):
        return ()
    nodes: list[bytes] = []
    lo, hi, m, whole = 0, second_size, first_size, True
    while True:
        if m == hi - lo:
            # SUBPROOF(m, D[m], false) = MTH(D[m]); with b = true the verifier
            # already holds that hash as the first root.
            if not whole:
                nodes.append(_range_root(leaf_hashes, lo, hi))
            break
        k = _split(hi - lo)
        if m <= k:
            nodes.append(_range_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            nodes.append(_range_root(leaf_hashes, lo, lo + k))
            lo += k
            m -= k
            whole = False
    return tuple(reversed(nodes))


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Recompute the root an inclusion proof commits to (RFC 9162 §2.1.3.2 steps 1-4)."""
    leaf = _check_hash(leaf, "leaf hash", InvalidProofError)
    if isinstance(index, bool) or not isinstance(index, int) or isinstance(size, bool) or not isinstance(size, int):
        raise InvalidProofError("leaf index and tree size must be integers")
    if not 0 <= index < size:
        raise InvalidProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for i, p in enumerate(proof):
        p = _check_hash(p, f"proof element {i}", InvalidProofError)
        if sn == 0:
            raise InvalidProofError(f"inclusion proof has {len(proof)} elements, more than a tree of size {size} needs")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProofError(
            f"inclusion proof has {len(proof)} elements, too few for leaf {index} of a tree of size {size}"
        )
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes) -> None:
    """Raise `InvalidProofError` unless *proof* shows *leaf* at *index* in the tree of *size* with *expected_root*."""
    expected_root = _check_hash(expected_root, "root", InvalidProofError)
    if root_from_inclusion_proof(leaf, index, size, proof) != expected_root:
        raise InvalidProofError(
            f"inclusion proof for leaf {index} of tree size {size} does not lead to the expected root"
        )


def verify_consistency(
    first_size: int, second_size: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> None:
    """Raise `InvalidProofError` unless *proof* shows the first tree is a prefix of the second (RFC 9162 §2.1.4.2)."""
    first_root = _check_hash(first_root, "first root", InvalidProofError)
    second_root = _check_hash(second_root, "second root", InvalidProofError)
    for name, value in (("first size", first_size), ("second size", second_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidProofError(f"{name} must be an integer")
    if not 0 <= first_size <= second_size:
        raise InvalidProofError(f"first size {first_size} is not between 0 and second size {second_size}")
    path = [_check_hash(p, f"proof element {i}", InvalidProofError) for i, p in enumerate(proof)]
    if first_size == second_size:
        if path:
            raise InvalidProofError("a proof between equal sizes must be empty")
        if first_root != second_root:
            raise InvalidProofError(f"roots differ for the same tree size {first_size}")
        return
    if first_size == 0:
        if path:
            raise InvalidProofError("a proof from the empty tree must be empty")
        if first_root != EMPTY_ROOT:
            raise InvalidProofError("first root is not the empty-tree root for size 0")
        return
    if not path:
        raise InvalidProofError(f"empty consistency proof between sizes {first_size} and {second_size}")
    if first_size & (first_size - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InvalidProofError(
                f"consistency proof has more elements than sizes {first_size} and {second_size} need"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProofError(f"consistency proof has too few elements for sizes {first_size} and {second_size}")
    if fr != first_root:
        raise InvalidProofError(f"consistency proof does not lead to the first root (size {first_size})")
    if sr != second_root:
        raise InvalidProofError(f"consistency proof does not lead to the second root (size {second_size})")


class MerkleAccumulator:
    """Append-only RFC 9162 tree state: the roots of the perfect subtrees ("peaks") of the current size.

    ``append`` costs O(1) amortised and O(log n) at worst, ``root`` O(log n).
    The siblings merged by the latest ``append`` are exactly the lower part of
    that leaf's audit path, so the last leaf's inclusion proof — what a
    checkpoint carries — comes for free.
    """

    __slots__ = ("_last_path", "_peaks", "_size")

    def __init__(self) -> None:
        self._peaks: list[bytes] = []
        self._size = 0
        self._last_path: tuple[bytes, ...] = ()

    @property
    def size(self) -> int:
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees, largest (leftmost) first; one per set bit of `size`."""
        return tuple(self._peaks)

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash (see `leaf_hash`); return its index."""
        return self.append_unchecked(_check_hash(leaf, "leaf hash", ValueError))

    def append_unchecked(self, leaf: bytes) -> int:
        """`append` for a caller that has just computed *leaf* with SHA-256 (the log writer, the verifier)."""
        peaks = self._peaks
        s = self._size
        if s & 1:
            h = leaf
            merged: list[bytes] = []
            while s & 1:
                left = peaks.pop()
                merged.append(left)
                h = _sha256(b"".join((_NODE_PREFIX, left, h))).digest()
                s >>= 1
            peaks.append(h)
            self._last_path = tuple(merged)
        else:
            peaks.append(leaf)
            self._last_path = ()
        index = self._size
        self._size = index + 1
        return index

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        # RFC 9162 splits off the largest power of two first, so peaks bag from the right.
        r = self._peaks[-1]
        for p in reversed(self._peaks[:-1]):
            r = node_hash(p, r)
        return r

    def last_inclusion_proof(self) -> tuple[bytes, ...]:
        """Inclusion proof of leaf ``size - 1`` in the current tree; equal to ``inclusion_proof(size-1, size, ...)``."""
        if not self._size:
            raise ValueError("an empty tree has no last leaf")
        return self._last_path + tuple(reversed(self._peaks[:-1]))
