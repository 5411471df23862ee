"""The SID <-> item index: a prefix tree over semantic IDs stored as CSR tensors.

Beam search needs, for a batch of prefixes, the codes that may follow them (so every returned
SID exists) and, at the end, the items behind each SID. Both are gathers into flat int64 tensors
that can live on the decoding device; no Python loop runs per item or per prefix.

Tree layout: depth 0 is the root, depth j holds one node per distinct prefix (s1..sj), numbered
in lexicographic order. Leaves (depth L) are the distinct full SIDs. Several items can share a
SID (a collision); inside a leaf they are ordered by ascending residual norm when one is given
(the items closest to the SID's reconstruction first), then by ascending item index.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from genret.tokenizers.artifacts import ArtifactError, load_artifact, save_artifact
from genret.tokenizers.inputs import as_codes

__all__ = ["SIDIndex"]

_TENSOR_FIELDS = ("codes", "root_children", "level1_node", "leaf_item_ptr", "leaf_items", "item_leaf")


class SIDIndex:
    """Many-to-one map from items to SIDs and back, with the child tables that constrain decoding.

    Build with `SIDIndex.build`; the constructor only stores fields. All tensors are int64.

    Attributes:
        n_items, n_levels, codebook_size: N, L, K.
        codes: (N, L) the SID of every item.
        root_children: (n1,) sorted distinct level-1 codes; node id at depth 1 = position here.
        level1_node: (K,) depth-1 node id of each level-1 code, -1 if no item uses it.
        child_ptr: L-1 tensors; child_ptr[j] (n_{j+1}+1,) CSR offsets of the children of the
            depth-(j+1) nodes into child_codes[j].
        child_codes: L-1 tensors; child_codes[j] (n_{j+2},) the level-(j+2) code of each
            depth-(j+2) node, sorted inside each parent's range; its position is the node id.
        leaf_item_ptr: (n_L+1,) CSR offsets of each leaf (full SID) into leaf_items.
        leaf_items: (N,) item indices grouped by leaf, in the documented order.
        item_leaf: (N,) leaf id of each item.
    """

    def __init__(
        self,
        codebook_size: int,
        codes: torch.Tensor,
        root_children: torch.Tensor,
        level1_node: torch.Tensor,
        child_ptr: list[torch.Tensor],
        child_codes: list[torch.Tensor],
        leaf_item_ptr: torch.Tensor,
        leaf_items: torch.Tensor,
        item_leaf: torch.Tensor,
    ) -> None:
        self.codebook_size = int(codebook_size)
        self.codes = codes
        self.root_children = root_children
        self.level1_node = level1_node
        self.child_ptr = list(child_ptr)
        self.child_codes = list(child_codes)
        self.leaf_item_ptr = leaf_item_ptr
        self.leaf_items = leaf_items
        self.item_leaf = item_leaf
        # Globally sorted keys parent_node * K + code, one per depth-(j+2) node: a single
        # searchsorted then finds a child inside its parent's range for a whole batch.
        self._child_keys = [
            torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), ptr.diff()) * self.codebook_size
            + child
            for ptr, child in zip(self.child_ptr, self.child_codes)
        ]
        # The most children any depth-(j+1) node has: `valid_mask` reads that many per parent and
        # `children` hands it to the decode step, a static width, so neither needs a host sync per
        # call (this one happens once, here).
        self._max_children = [int(ptr.diff().max()) if ptr.numel() > 1 else 0 for ptr in self.child_ptr]
        # The root as a one-parent CSR table, so `children(0)` looks like every other level.
        self._root_ptr = torch.tensor([0, root_children.numel()], dtype=torch.long, device=root_children.device)

    # ------------------------------------------------------------------ sizes
    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_levels(self) -> int:
        return int(self.codes.shape[1])

    @property
    def n_leaves(self) -> int:
        return int(self.leaf_item_ptr.numel() - 1)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def n_nodes(self, depth: int) -> int:
        """Number of distinct prefixes of length `depth` (1 for the root, n_leaves at depth L)."""
        if depth == 0:
            return 1
        if depth == 1:
            return int(self.root_children.numel())
        return int(self.child_codes[depth - 2].numel())

    def __repr__(self) -> str:
        return (
            f"SIDIndex(n_items={self.n_items}, n_levels={self.n_levels}, codebook_size={self.codebook_size}, "
            f"n_sids={self.n_leaves}, device={self.device})"
        )

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        codes: np.ndarray | torch.Tensor,
        codebook_size: int,
        residual_norm: np.ndarray | torch.Tensor | None = None,
    ) -> "SIDIndex":
        """Build the index from every item's codes.

        Args:
            codes: (N, L) integer codes in [0, codebook_size); item i has SID codes[i].
            codebook_size: K.
            residual_norm: optional (N,) float distance of each item to its SID's reconstruction;
                orders the items inside a shared SID (ascending; ties by item index).

        Returns:
            SIDIndex on the CPU (move it with `.to(device)`).

        Raises:
            ValueError: bad shapes, codes out of range, or non-finite residual norms.
        """
        if isinstance(codebook_size, bool) or not isinstance(codebook_size, (int, np.integer)) or codebook_size < 1:
            raise ValueError(f"codebook_size must be an integer >= 1; got {codebook_size!r}")
        K = int(codebook_size)
        n_levels = codes.shape[1] if getattr(codes, "ndim", 0) == 2 else -1
        if n_levels < 1:
            shape = tuple(getattr(codes, "shape", ()))
            raise ValueError(f"codes must have shape (n_items, n_levels >= 1); got {shape}")
        codes_t = as_codes(codes, n_levels, K, "codes")
        N = codes_t.shape[0]
        if N == 0:
            raise ValueError("codes is empty: an index needs at least one item")
        codes_np = codes_t.numpy()

        # Sort items by (s1, ..., sL, residual_norm, item index); np.lexsort's last key is the primary one.
        keys: list[np.ndarray] = [np.arange(N)]
        if residual_norm is not None:
            if isinstance(residual_norm, torch.Tensor):
                norm = residual_norm.detach().cpu().numpy()
            else:
                norm = np.asarray(residual_norm)
            if norm.shape != (N,):
                raise ValueError(f"residual_norm must have shape ({N},) to match codes; got {norm.shape}")
            if norm.dtype.kind not in "fiu" or not np.isfinite(norm).all():
                raise ValueError("residual_norm must be finite real numbers")
            keys.append(norm.astype(np.float64))
        keys += [codes_np[:, level] for level in range(n_levels - 1, -1, -1)]
        order = np.lexsort(keys)
        sorted_codes = codes_np[order]  # (N, L)

        # new_prefix[j][i]: row i starts a new distinct prefix of length j+1.
        changed = np.ones((N, n_levels), dtype=bool)
        changed[1:] = sorted_codes[1:] != sorted_codes[:-1]
        new_prefix = np.logical_or.accumulate(changed, axis=1)  # (N, L)
        new_prefix[0] = True
        node_of_row = np.cumsum(new_prefix, axis=0) - 1  # (N, L) node id at depth j+1 of each sorted row

        root_children = sorted_codes[new_prefix[:, 0], 0]
        level1_node = np.full(K, -1, dtype=np.int64)
        level1_node[root_children] = np.arange(root_children.size)

        child_ptr, child_codes = [], []
        for depth in range(1, n_levels):  # children at depth+1 of the nodes at `depth`
            starts = new_prefix[:, depth]
            parents = node_of_row[starts, depth - 1]
            counts = np.bincount(parents, minlength=int(node_of_row[-1, depth - 1]) + 1)
            child_ptr.append(np.concatenate([[0], np.cumsum(counts)]))
            child_codes.append(sorted_codes[starts, depth])

        leaf_of_row = node_of_row[:, -1]
        n_leaves = int(leaf_of_row[-1]) + 1
        leaf_item_ptr = np.concatenate([[0], np.cumsum(np.bincount(leaf_of_row, minlength=n_leaves))])
        item_leaf = np.empty(N, dtype=np.int64)
        item_leaf[order] = leaf_of_row

        def long(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

        return cls(
            codebook_size=K,
            codes=codes_t.clone(),
            root_children=long(root_children),
            level1_node=long(level1_node),
            child_ptr=[long(p) for p in child_ptr],
            child_codes=[long(c) for c in child_codes],
            leaf_item_ptr=long(leaf_item_ptr),
            leaf_items=long(order),
            item_leaf=long(item_leaf),
        )

    # ------------------------------------------------------------------ queries
    def node_of(self, prefix: torch.Tensor) -> torch.Tensor:
        """Node ids of code prefixes.

        Args:
            prefix: (M, j) int64 prefixes (s1..sj), 0 <= j <= L, on the index's device.

        Returns:
            (M,) int64 node ids at depth j (0 for the root when j == 0); -1 where the prefix does
            not exist (including codes outside [0, K)).
        """
        prefix = torch.as_tensor(prefix, device=self.device)
        if prefix.dim() != 2 or prefix.shape[1] > self.n_levels:
            raise ValueError(f"prefix must have shape (M, j) with j <= {self.n_levels}; got {tuple(prefix.shape)}")
        prefix = prefix.long()
        M, depth = prefix.shape
        if depth == 0:
            return torch.zeros(M, dtype=torch.long, device=self.device)
        K = self.codebook_size
        in_range = (prefix >= 0) & (prefix < K)
        safe = torch.where(in_range, prefix, torch.zeros_like(prefix))
        node = torch.where(in_range[:, 0], self.level1_node[safe[:, 0]], -1)
        for level in range(1, depth):
            keys = self._child_keys[level - 1]
            query = node.clamp(min=0) * K + safe[:, level]
            pos = torch.searchsorted(keys, query).clamp_(max=max(keys.numel() - 1, 0))
            found = (node >= 0) & in_range[:, level] & (keys.numel() > 0) & (keys[pos] == query)
            node = torch.where(found, pos, -1)
        return node

    def items_of(self, sids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items behind full SIDs, as CSR.

        Args:
            sids: (M, L) int64 full SIDs.

        Returns:
            ptr (M+1,) int64 offsets and items (ptr[-1],) int64: the items of sids[m] are
            items[ptr[m]:ptr[m+1]], in the index's order inside a SID; unknown SIDs give empty ranges.
        """
        sids = torch.as_tensor(sids, device=self.device)
        if sids.dim() != 2 or sids.shape[1] != self.n_levels:
            raise ValueError(f"sids must have shape (M, {self.n_levels}); got {tuple(sids.shape)}")
        leaf = self.node_of(sids)
        safe = leaf.clamp(min=0)
        start = self.leaf_item_ptr[safe]
        counts = torch.where(leaf >= 0, self.leaf_item_ptr[safe + 1] - start, 0)
        ptr = torch.zeros(leaf.numel() + 1, dtype=torch.long, device=self.device)
        torch.cumsum(counts, 0, out=ptr[1:])
        row = torch.repeat_interleave(torch.arange(leaf.numel(), device=self.device), counts)
        offset = torch.arange(row.numel(), device=self.device) - ptr[row]
        return ptr, self.leaf_items[start[row] + offset]

    def children(self, level: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The CSR children lists of the depth-`level` nodes (the codes that may follow each prefix).

        Args:
            level: depth of the parents (0 = root, ..., L-1).

        Returns:
            ptr (n_level + 1,) int64 offsets into codes; codes int64, the level+1 codes of each
            parent's children, ascending inside its range; and the largest fan-out of the level
            (known on the host, so a decode step can use it as a static width).
        """
        if not 0 <= level < self.n_levels:
            raise ValueError(f"level must be in [0, {self.n_levels - 1}] (the parents' depth); got {level}")
        if level == 0:
            return self._root_ptr, self.root_children, int(self.root_children.numel())
        return self.child_ptr[level - 1], self.child_codes[level - 1], self._max_children[level - 1]

    def valid_mask(self, level: int, node_ids: torch.Tensor, codebook_size: int | None = None) -> torch.Tensor:
        """Which next codes exist below each parent node.

        Args:
            level: depth of the parents (0 = root, ..., L-1); the mask is over the codes of level+1.
            node_ids: (M,) int64 parent node ids at that depth (-1 rows get an all-False mask).
            codebook_size: mask width (>= K, e.g. a vocabulary with extra tokens); K by default.

        Returns:
            (M, width) bool, True where code c follows the parent in some item's SID.
        """
        if not 0 <= level < self.n_levels:
            raise ValueError(f"level must be in [0, {self.n_levels - 1}] (the parents' depth); got {level}")
        width = self.codebook_size if codebook_size is None else int(codebook_size)
        if width < self.codebook_size:
            raise ValueError(f"codebook_size {width} is smaller than the index's {self.codebook_size}")
        node_ids = torch.as_tensor(node_ids, device=self.device).long().reshape(-1)
        M = node_ids.numel()
        mask = torch.zeros(M, width, dtype=torch.bool, device=self.device)
        if level == 0:
            allowed = torch.zeros(width, dtype=torch.bool, device=self.device)
            allowed[self.root_children] = True
            return mask | (allowed[None, :] & (node_ids == 0)[:, None])
        ptr, child = self.child_ptr[level - 1], self.child_codes[level - 1]
        valid = (node_ids >= 0) & (node_ids < ptr.numel() - 1)
        safe = torch.where(valid, node_ids, 0)
        start = ptr[safe]
        counts = torch.where(valid, ptr[safe + 1] - start, 0)
        # Every parent reads `max_children` slots of its children list (static shapes: no host
        # sync); slots past its own count write into a spare column that is dropped.
        j = torch.arange(self._max_children[level - 1], device=self.device)
        has = j < counts[:, None]  # (M, C)
        slot = (start[:, None] + j).clamp(max=max(child.numel() - 1, 0))
        column = torch.where(has, child[slot], width) if child.numel() else torch.full_like(slot, width)
        wide = torch.zeros(M, width + 1, dtype=torch.bool, device=self.device)
        wide.scatter_(1, column, True)
        return wide[:, :width]

    def sids_of(self, items: torch.Tensor) -> torch.Tensor:
        """(M,) item indices -> (M, L) their SIDs."""
        return self.codes[torch.as_tensor(items, device=self.device).long()]

    # ------------------------------------------------------------------ catalogue updates
    def add_items(self, codes: np.ndarray | torch.Tensor) -> "SIDIndex":
        """A new index with `codes` (m, L) appended as items N..N+m-1 (no retraining, no re-tokenising).

        Existing items keep their SIDs, their item indices and their order inside every SID; an
        added item goes after the items already in its SID (after earlier additions too), which is
        the build order's "ties by item index" rule with the new items' larger indices. Residual
        norms are not stored in an index, so an added item is not placed by its norm.

        Args:
            codes: (m, L) integer codes in [0, codebook_size), e.g. the fitted tokenizer's
                `encode` of the new items' embeddings.

        Returns:
            SIDIndex on this index's device.
        """
        n_levels = codes.shape[1] if getattr(codes, "ndim", 0) == 2 else -1
        if n_levels != self.n_levels:
            raise ValueError(f"new codes must have shape (m, {self.n_levels}); got {tuple(getattr(codes, 'shape', ()))}")
        new = as_codes(codes, self.n_levels, self.codebook_size, "codes")
        N, m = self.n_items, new.shape[0]
        # Each existing item's rank in the current order is its sort key inside its SID; new items follow.
        rank = torch.empty(N, dtype=torch.float64)
        rank[self.leaf_items.cpu()] = torch.arange(N, dtype=torch.float64)
        key = torch.cat([rank, N + torch.arange(m, dtype=torch.float64)])
        merged = torch.cat([self.codes.cpu(), new])
        return SIDIndex.build(merged, self.codebook_size, residual_norm=key).to(self.device)

    # ------------------------------------------------------------------ moving and saving
    def to(self, device: str | torch.device) -> "SIDIndex":
        """A copy with every tensor on `device`."""
        return SIDIndex(
            codebook_size=self.codebook_size,
            **{name: getattr(self, name).to(device) for name in _TENSOR_FIELDS},
            child_ptr=[t.to(device) for t in self.child_ptr],
            child_codes=[t.to(device) for t in self.child_codes],
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain ints and CPU tensors (lists for the per-depth tables), e.g. for a Lightning checkpoint."""
        state: dict[str, Any] = {"artifact_kind": "SIDIndex", "codebook_size": self.codebook_size}
        state.update({name: getattr(self, name).cpu() for name in _TENSOR_FIELDS})
        state["child_ptr"] = [t.cpu() for t in self.child_ptr]
        state["child_codes"] = [t.cpu() for t in self.child_codes]
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "SIDIndex":
        """Inverse of `state_dict`; checks that the tables fit together.

        Raises:
            ValueError: missing fields or inconsistent shapes.
        """
        try:
            index = cls(
                codebook_size=int(state["codebook_size"]),
                **{name: state[name] for name in _TENSOR_FIELDS},
                child_ptr=list(state["child_ptr"]),
                child_codes=list(state["child_codes"]),
            )
        except (KeyError, TypeError, RuntimeError) as err:
            raise ValueError(f"not a SIDIndex state dict: {err!r}") from err
        index._check_consistent()
        return index

    def _check_consistent(self) -> None:
        L, N = self.n_levels, self.n_items
        problems = []
        if len(self.child_ptr) != L - 1 or len(self.child_codes) != L - 1:
            problems.append(f"{len(self.child_ptr)} child tables for {L} levels")
        else:
            for j, (ptr, child) in enumerate(zip(self.child_ptr, self.child_codes)):
                if ptr.numel() != self.n_nodes(j + 1) + 1 or int(ptr[-1]) != child.numel():
                    problems.append(f"child_ptr[{j}] does not match its nodes")
        if self.leaf_item_ptr.numel() != self.n_nodes(L) + 1 or int(self.leaf_item_ptr[-1]) != N:
            problems.append("leaf_item_ptr does not match the leaves")
        sizes = (self.leaf_items.numel(), self.item_leaf.numel(), self.level1_node.numel())
        if sizes != (N, N, self.codebook_size):
            problems.append("item tables have the wrong length")
        if problems:
            raise ValueError("inconsistent SIDIndex: " + "; ".join(problems))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to `path` (torch format, atomic, versioned)."""
        save_artifact(path, "SIDIndex", {"state": self.state_dict()})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "SIDIndex":
        """Read an index written by `save` onto `device`.

        Raises:
            ArtifactNotFoundError: no file at `path`.
            ArtifactError: corrupt file, not an index, another artifact version, or inconsistent tables.
        """
        payload = load_artifact(path, "SIDIndex")
        try:
            index = cls.from_state_dict(payload["state"])
        except (KeyError, ValueError) as err:
            raise ArtifactError(f"{path} is not a valid SIDIndex file: {err}") from err
        return index.to(device)
