"""SIDIndex on hand-built codes (collisions, unused prefixes, order inside a SID) and against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genret.tokenizers import ArtifactError, SIDIndex

# Seven items, K=4, L=3. Level-1 code 2 is unused; SID (1,2,3) is shared by items 0, 2 and 5.
CODES = np.array(
    [
        [1, 2, 3],  # 0
        [0, 1, 1],  # 1
        [1, 2, 3],  # 2
        [1, 0, 2],  # 3
        [3, 3, 0],  # 4
        [1, 2, 3],  # 5
        [1, 2, 0],  # 6
    ]
)
T = torch.tensor


@pytest.fixture
def index() -> SIDIndex:
    return SIDIndex.build(CODES, 4)


def test_tables_by_hand(index):
    assert (index.n_items, index.n_levels, index.codebook_size, index.n_leaves) == (7, 3, 4, 5)
    assert index.root_children.tolist() == [0, 1, 3]
    assert index.level1_node.tolist() == [0, 1, -1, 2]
    # depth-2 nodes in order: (0,1) (1,0) (1,2) (3,3)
    assert index.child_ptr[0].tolist() == [0, 1, 3, 4]
    assert index.child_codes[0].tolist() == [1, 0, 2, 3]
    # leaves in order: (0,1,1) (1,0,2) (1,2,0) (1,2,3) (3,3,0)
    assert index.child_ptr[1].tolist() == [0, 1, 2, 4, 5]
    assert index.child_codes[1].tolist() == [1, 2, 0, 3, 0]
    assert index.leaf_item_ptr.tolist() == [0, 1, 2, 3, 6, 7]
    assert index.leaf_items.tolist() == [1, 3, 6, 0, 2, 5, 4]  # no norms: ascending item index in a SID
    assert index.item_leaf.tolist() == [3, 0, 3, 1, 4, 3, 2]
    assert torch.equal(index.codes, torch.from_numpy(CODES))
    for t in [index.codes, index.root_children, index.leaf_items, *index.child_ptr, *index.child_codes]:
        assert t.dtype == torch.int64


def test_order_inside_a_colliding_sid_follows_residual_norm_then_item_index():
    norms = np.array([0.5, 0.0, 0.1, 0.0, 0.0, 0.1, 0.0])
    index = SIDIndex.build(CODES, 4, residual_norm=norms)
    ptr, items = index.items_of(T([[1, 2, 3]]))
    assert items.tolist() == [2, 5, 0]  # 0.1 (item 2), 0.1 (item 5, tie -> index), 0.5
    assert index.item_leaf.tolist() == [3, 0, 3, 1, 4, 3, 2]  # the tree itself does not change


def test_node_of_existing_missing_and_out_of_range_prefixes(index):
    assert index.node_of(T([[0], [1], [2], [3], [4], [-1]])).tolist() == [0, 1, -1, 2, -1, -1]
    assert index.node_of(T([[1, 2], [2, 0], [1, 1], [3, 3], [0, 1]])).tolist() == [2, -1, -1, 3, 0]
    assert index.node_of(T([[1, 2, 3], [1, 2, 0], [1, 2, 1], [3, 3, 0], [0, 1, 9]])).tolist() == [3, 2, -1, 4, -1]
    assert index.node_of(torch.zeros(3, 0, dtype=torch.long)).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="prefix must have shape"):
        index.node_of(T([[1, 2, 3, 0]]))


def test_items_of_full_sids_with_unknown_ones(index):
    ptr, items = index.items_of(T([[1, 2, 3], [2, 2, 2], [3, 3, 0], [0, 1, 1]]))
    assert ptr.tolist() == [0, 3, 3, 4, 5]
    assert items.tolist() == [0, 2, 5, 4, 1]
    ptr, items = index.items_of(torch.empty(0, 3, dtype=torch.long))
    assert ptr.tolist() == [0] and items.numel() == 0


def test_valid_mask_at_each_depth(index):
    root = index.valid_mask(0, T([0]))
    assert root.tolist() == [[True, True, False, True]]
    level1 = index.valid_mask(1, index.node_of(T([[1], [0], [3], [2]])))
    assert level1.tolist() == [
        [True, False, True, False],
        [False, True, False, False],
        [False, False, False, True],
        [False, False, False, False],  # unused prefix (node -1): nothing allowed
    ]
    level2 = index.valid_mask(2, index.node_of(T([[1, 2], [1, 0]])))
    assert level2.tolist() == [[True, False, False, True], [False, False, True, False]]
    wide = index.valid_mask(1, T([1]), codebook_size=6)
    assert wide.shape == (1, 6) and wide.tolist() == [[True, False, True, False, False, False]]
    with pytest.raises(ValueError, match="level must be in"):
        index.valid_mask(3, T([0]))


def test_one_level_index():
    index = SIDIndex.build(np.array([[2], [0], [2]]), 3)
    assert index.child_ptr == [] and index.child_codes == []
    assert index.root_children.tolist() == [0, 2] and index.level1_node.tolist() == [0, -1, 1]
    assert index.leaf_item_ptr.tolist() == [0, 1, 3] and index.leaf_items.tolist() == [1, 0, 2]
    ptr, items = index.items_of(T([[2], [1]]))
    assert ptr.tolist() == [0, 2, 2] and items.tolist() == [0, 2]
    assert index.valid_mask(0, T([0])).tolist() == [[True, False, True]]


@pytest.mark.parametrize("n_levels", [1, 2, 3])
def test_against_brute_force_on_random_codes(n_levels):
    rng = np.random.default_rng(n_levels)
    K, N = 5, 300
    codes = rng.integers(0, K, size=(N, n_levels))
    codes[:, 0] = np.where(codes[:, 0] == 3, 4, codes[:, 0])  # level-1 code 3 unused
    norms = rng.random(N).round(1)  # many ties
    index = SIDIndex.build(torch.from_numpy(codes), K, residual_norm=torch.from_numpy(norms))

    groups: dict[tuple, list[int]] = {}
    for i, sid in enumerate(map(tuple, codes.tolist())):
        groups.setdefault(sid, []).append(i)
    for depth in range(1, n_levels + 1):
        prefixes = sorted({sid[:depth] for sid in groups})
        ids = index.node_of(T(prefixes))
        assert ids.tolist() == list(range(len(prefixes)))  # node id = lexicographic rank of the prefix
        if depth < n_levels:
            mask = index.valid_mask(depth, ids)
            for row, prefix in enumerate(prefixes):
                allowed = {sid[depth] for sid in groups if sid[:depth] == prefix}
                assert set(torch.nonzero(mask[row]).flatten().tolist()) == allowed
    sids = sorted(groups)
    ptr, items = index.items_of(T(sids))
    for m, sid in enumerate(sids):
        expected = sorted(groups[sid], key=lambda i: (norms[i], i))
        assert items[ptr[m] : ptr[m + 1]].tolist() == expected
    leaf_of = {sid: m for m, sid in enumerate(sids)}
    assert index.item_leaf.tolist() == [leaf_of[tuple(c)] for c in codes.tolist()]


def test_state_dict_round_trip_and_checkpoint_friendly(tmp_path, index):
    state = index.state_dict()
    torch.save({"sid_index": state}, tmp_path / "ckpt.pt")
    restored = SIDIndex.from_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["sid_index"])
    _assert_same(restored, index)
    state["leaf_item_ptr"] = state["leaf_item_ptr"][:-1]
    with pytest.raises(ValueError, match="inconsistent SIDIndex"):
        SIDIndex.from_state_dict(state)
    with pytest.raises(ValueError, match="not a SIDIndex state dict"):
        SIDIndex.from_state_dict({"codebook_size": 4})


def test_save_load_and_to_device(tmp_path, index):
    index.save(tmp_path / "index.pt")
    loaded = SIDIndex.load(tmp_path / "index.pt")
    _assert_same(loaded, index)
    moved = index.to("cpu")
    assert moved.node_of(T([[1, 2, 3]])).tolist() == [3]
    (tmp_path / "bad.pt").write_text("not a torch file")
    with pytest.raises(ArtifactError):
        SIDIndex.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        SIDIndex.load(tmp_path / "missing.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_queries_on_cuda(index):
    gpu = index.to("cuda")
    prefixes = T([[1, 2], [2, 0]], device="cuda")
    assert gpu.node_of(prefixes).tolist() == [2, -1]
    assert gpu.valid_mask(2, gpu.node_of(prefixes)).cpu().tolist() == [[True, False, False, True], [False] * 4]
    ptr, items = gpu.items_of(T([[1, 2, 3]], device="cuda"))
    assert items.device.type == "cuda" and items.tolist() == [0, 2, 5]


def test_bad_input():
    with pytest.raises(ValueError, match=r"1 values outside \[0, 4\)"):
        SIDIndex.build(np.array([[0, 4]]), 4)
    with pytest.raises(ValueError, match="residual_norm must have shape"):
        SIDIndex.build(CODES, 4, residual_norm=np.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(n_items, n_levels"):
        SIDIndex.build(np.array([1, 2, 3]), 4)


def _assert_same(a: SIDIndex, b: SIDIndex) -> None:
    assert a.codebook_size == b.codebook_size
    for name in ("codes", "root_children", "level1_node", "leaf_item_ptr", "leaf_items", "item_leaf"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert all(torch.equal(x, y) for x, y in zip(a.child_ptr, b.child_ptr))
    assert all(torch.equal(x, y) for x, y in zip(a.child_codes, b.child_codes))


def test_add_items_keeps_existing_sids_and_collision_order():
    import numpy as np
    import torch

    from genret.tokenizers import SIDIndex

    codes = np.array([[0, 1], [0, 1], [2, 3], [0, 2]])
    index = SIDIndex.build(codes, 4, residual_norm=np.array([0.9, 0.1, 0.5, 0.2]))
    grown = index.add_items(np.array([[0, 1], [3, 3]]))
    assert grown.n_items == 6
    assert torch.equal(grown.codes[:4], index.codes)  # existing SIDs unchanged
    ptr, items = grown.items_of(torch.tensor([[0, 1], [3, 3]]))
    # Inside SID (0, 1): the old order (item 1 before item 0, by residual norm), then the new item 4.
    assert items[ptr[0]:ptr[1]].tolist() == [1, 0, 4]
    assert items[ptr[1]:ptr[2]].tolist() == [5]
    assert torch.equal(grown.sids_of(torch.tensor([5])), torch.tensor([[3, 3]]))
    # A second addition goes after the first.
    again = grown.add_items(np.array([[0, 1]]))
    ptr, items = again.items_of(torch.tensor([[0, 1]]))
    assert items[ptr[0]:ptr[1]].tolist() == [1, 0, 4, 6]
    with pytest.raises(ValueError, match="shape"):
        index.add_items(np.array([[0, 1, 2]]))
