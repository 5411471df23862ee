"""DualGR's cold start under the leave-one-out-cold protocol: cold items never reach training, the
content vectors / tokenizer / SIDs are fitted without them, a cold item gets its SID from the fitted
tokenizer and becomes retrievable after `Retriever.add_items` (with the teacher-forced score),
existing SIDs do not move, and the errors name their fix."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from genret.data import load_dataset
from genret.data.cold import leave_one_out_cold
from genret.decoding.retriever import Retriever
from genret.models.dualgr import DualGR, DualGRConfig
from genret.tokenizers.semantic_ids import SIDConfig
from genret.tokenizers.unique_codes import spread_added_items
from genret.training.sequence_datamodule import SequenceDataModule

TESTS = Path(__file__).resolve().parents[1]
CONFIG = TESTS.parent / "configs" / "dualgr_ml1m_looc.yaml"


def _load(name: str, path: Path):
    """A helper module beside other tests (importlib import mode: load it by path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ml = _load("retrievalformer_tests", TESTS / "training" / "test_retrievalformer.py")  # write_movielens
beam = _load("beam_search_tests", TESTS / "decoding" / "test_beam_search.py")  # teacher_forced_logprob

K = 4  # tiny codebooks: 4^3 SIDs for ~40 items


def looc_dm(data, cold_valid_users: int = 0, **sid) -> SequenceDataModule:
    cfg = SIDConfig(**{"n_levels": 3, "codebook_size": K, "embeddings": "content", "embedding_dim": 8, "cache_dir": None,
                       **sid})
    dm = SequenceDataModule(data=str(data), sid=cfg, max_history=30, max_negatives=8, batch_size=16,
                            protocol="looc", cold_seed_users=8, cold_seed=1, cold_valid_users=cold_valid_users,
                            load_options={"low_ratings_as_negatives": False} if data != "synthetic:300x200" else {})
    dm.setup()
    return dm


@pytest.fixture
def tiny_ml(tmp_path) -> Path:
    return ml.write_movielens(tmp_path / "tiny-ml")


def test_cold_items_never_reach_training(tiny_ml):
    dm = looc_dm(tiny_ml)
    full, n_warm = dm.cold_split.log, dm.n_items
    cold = np.arange(n_warm, full.n_items)
    # The same cold set (by raw id) as RetrievalFormer's split of the same data and seeds.
    plain = leave_one_out_cold(load_dataset(tiny_ml, low_ratings_as_negatives=False), 8, 1)
    assert sorted(full.item_ids[cold].tolist()) == sorted(plain.log.item_ids[plain.cold_items].tolist())
    assert np.array_equal(dm.cold_split.cold_items, cold) and len(cold) > 0
    # The trained catalogue is the warm items: codes, SID index, training rows, batches.
    assert dm.log_all.n_items == n_warm == len(dm.codes) == dm.sid_index.n_items
    assert dm.train_log.item.max() < n_warm and dm.train_sequences.pos_items.max() < n_warm
    for batch in dm.train_dataloader():
        assert int(batch.items.max()) < n_warm
    # Cold users: a cold target after a warm history; warm users never see a cold item.
    es = dm.eval_sets["cold"]
    assert (es.targets >= n_warm).all() and (es.history_items < n_warm).all()
    # Their history rows index the warm catalogue's log, whose side features the decoder reads.
    assert np.array_equal(dm.log_all.item[es.history_rows], es.history_items)
    assert (dm.eval_sets["test"].targets < n_warm).all() and (dm.eval_sets["valid"].targets < n_warm).all()
    assert not set(es.users.tolist()) & set(dm.eval_sets["test"].users.tolist())


def test_cold_validation_items_leave_training_and_join_after_it(tiny_ml):
    dm = looc_dm(tiny_ml, cold_valid_users=8)
    split, n_warm = dm.cold_split, dm.n_items
    plain = looc_dm(tiny_ml)
    # The same test cold items and users as without the validation draw.
    assert sorted(split.log.item_ids[split.test_cold_items]) == sorted(plain.cold_split.log.item_ids[plain.n_items:])
    assert np.array_equal(dm.eval_sets["cold"].users, plain.eval_sets["cold"].users)
    # Both kinds are outside the trained catalogue, numbered last, and added after training.
    assert len(split.valid_cold_items) and np.array_equal(split.cold_items, np.arange(n_warm, split.log.n_items))
    assert n_warm == plain.n_items - len(split.valid_cold_items) == len(dm.codes)
    assert dm.train_log.item.max() < n_warm and dm.train_sequences.pos_items.max() < n_warm
    raw_ids, codes = dm.cold_items()
    assert np.array_equal(raw_ids, split.log.item_ids[split.cold_items]) and len(codes) == len(raw_ids)
    cv = dm.eval_sets["cold_valid"]
    assert len(cv) and set(cv.targets.tolist()) <= set(split.valid_cold_items.tolist())
    assert (cv.history_items < n_warm).all() and np.array_equal(dm.log_all.item[cv.history_rows], cv.history_items)
    # Warm validation and test leave the validation cold users out (Lightning validates on the former).
    users = set(cv.users.tolist())
    for stage in ("valid", "test", "cold"):
        assert not users & set(dm.eval_sets[stage].users.tolist()), stage
    assert np.array_equal(dm.valid_users, dm.eval_sets["valid"].users)
    assert users <= set(plain.eval_sets["valid"].users.tolist())  # without the draw they were warm validation users
    with pytest.raises(ValueError, match="data.cold_valid_users must be >= 0"):
        SequenceDataModule(data=str(tiny_ml), sid=SIDConfig(embeddings="content"), protocol="looc",
                           cold_valid_users=-1)


def test_cold_items_are_never_entp_negatives():
    # The synthetic feed has exposures (label 0): some of them are of cold items in the full log.
    dm = looc_dm("synthetic:300x200")
    n_warm, full = dm.n_items, dm.cold_split.log
    assert ((full.label == 0) & (full.item >= n_warm)).any()  # otherwise the check below proves nothing
    assert len(dm.train_sequences.neg_items) and dm.train_sequences.neg_items.max() < n_warm
    for batch in dm.train_dataloader():
        assert int(batch.neg_items.max()) < n_warm


def test_content_vectors_and_sids_are_fitted_without_cold_items(tiny_ml, tmp_path):
    dm = looc_dm(tiny_ml)
    cold_raw = set(dm.cold_split.log.item_ids[dm.n_items:].tolist())
    # The same data with every cold item's title, year and genre replaced (by values warm items have:
    # a cold item with no known value cannot be placed at all, see test_clear_errors).
    other = tmp_path / "other-ml"
    other.mkdir()
    for name in ("sequences.txt", "users.dat"):
        (other / name).write_text((tiny_ml / name).read_text())
    lines = []
    for line in (tiny_ml / "movies.dat").read_text(encoding="latin-1").splitlines():
        movie = int(line.split("::")[0])
        lines.append(f"{movie}::Night River Horror (1981)::Horror" if movie in cold_raw else line)
    (other / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    changed = looc_dm(other, content_features=["genres", "year", "title_words"])
    base = looc_dm(tiny_ml, content_features=["genres", "year", "title_words"])
    # Nothing fitted moved: warm SIDs, codebooks. The cold vectors did (the change reached them).
    assert np.array_equal(changed.codes, base.codes)
    for a, b in zip(changed.tokenizer.codebooks_, base.tokenizer.codebooks_):
        torch.testing.assert_close(a, b)
    assert not np.allclose(changed.cold_vectors, base.cold_vectors)


def test_a_cold_item_gets_a_sid_from_the_fitted_tokenizer_and_is_retrievable(tiny_ml):
    dm = looc_dm(tiny_ml)
    n_warm = dm.n_items
    greedy = dm.tokenizer.encode(dm.cold_vectors)
    raw_ids, shared = dm.cold_items()
    assert np.array_equal(shared, greedy)  # the default: the fitted tokenizer's SIDs as they are
    dm.cold_sids = "spread"
    raw_ids, codes = dm.cold_items()
    # Spread: only a last code may move, off a taken SID.
    assert np.array_equal(codes[:, :-1], greedy[:, :-1])
    taken = {tuple(c) for c in dm.codes.tolist()}
    for g, c in zip(greedy.tolist(), codes.tolist()):
        assert c == g or tuple(g) in taken  # moved only off a SID a warm or earlier cold item holds
        taken.add(tuple(c))
    assert (codes != greedy).any()  # tiny codebooks: some cold item did collide, so the rule was exercised
    # Paths: every prefix of a cold SID is a warm SID's prefix; a greedy SID already on one is kept.
    dm.cold_sids = "paths"
    _, on_paths = dm.cold_items()
    for level in (1, 2, 3):
        warm = {tuple(c) for c in dm.codes[:, :level].tolist()}
        assert all(tuple(c) in warm for c in on_paths[:, :level].tolist())
    warm_sids = {tuple(c) for c in dm.codes.tolist()}
    kept = np.array([tuple(g) in warm_sids for g in greedy.tolist()])
    assert kept.any() and np.array_equal(on_paths[kept], greedy[kept])

    torch.manual_seed(0)
    model = DualGR(DualGRConfig(n_levels=3, codebook_size=K, n_items=0, d_model=32, n_heads=4, n_blocks=1,
                                d_ffn=64, dropout=0.0, max_history=30, long_window=30, short_window=4,
                                use_dbr=False)).eval()
    model.set_item_codes(torch.as_tensor(dm.codes))
    retriever = Retriever(model, dm.sid_index, dm.log_all.item_ids, kernel="torch")
    sids = torch.as_tensor(np.unique(dm.codes, axis=0))
    ptr0, items0 = retriever.index.items_of(sids)
    retriever.add_items(raw_ids, codes)
    # Existing items keep their SIDs (index and model table) and their order inside a SID; a cold
    # item on a warm SID comes after the warm ones (the collision-order contract).
    assert torch.equal(retriever.index.codes[:n_warm].cpu(), torch.as_tensor(dm.codes))
    assert torch.equal(retriever.model.item_codes[:n_warm].cpu(), torch.as_tensor(dm.codes))
    ptr1, items1 = retriever.index.items_of(sids)
    for m in range(len(sids)):
        old, new = items0[ptr0[m]:ptr0[m + 1]].tolist(), items1[ptr1[m]:ptr1[m + 1]].tolist()
        assert new[:len(old)] == old and all(i >= n_warm for i in new[len(old):])
    # Every cold item comes back from beam search over the whole catalogue, scored as teacher forcing scores it.
    history = dm.log_all.item_ids[:5].tolist()
    out = retriever.retrieve([history], k=retriever.index.n_items, exclude_seen=False)
    got = dict(zip(out.items[0], out.scores[0]))
    assert set(raw_ids.tolist()) <= set(got)
    all_codes = retriever.model.item_codes.cpu()
    for j in (0, len(raw_ids) - 1):
        expected = beam.teacher_forced_logprob(model, list(range(5)), n_warm + j, all_codes)
        assert got[raw_ids[j]] == pytest.approx(float(expected), abs=1e-4)


def _module_checkpoint(dm, path: Path) -> Path:
    """A DualGR checkpoint of an untrained model on `dm`, written by the module's own hook."""
    from genret.training.dualgr_module import DualGRModule

    torch.manual_seed(0)
    module = DualGRModule(DualGRConfig(d_model=32, n_heads=4, n_blocks=1, d_ffn=64, dropout=0.0, long_window=30,
                                       short_window=4, use_dbr=False), use_item_id=False)
    module.build_from_data(dm)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()}}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def _cold_features(dm) -> list[dict]:
    """The cold items' raw content features, one mapping per item (as a user would send them)."""
    from genret.data.item_features import raw_item_features

    raw = raw_item_features(dm.cold_split.log, dm.content_vectorizer.names)
    return [{name: raw[name][i] for name in raw} for i in range(dm.n_items, dm.cold_split.log.n_items)]


# SIDs from content, or from the training sequences with cold items placed by their content neighbours.
PLACEMENTS = {"content": {}, "neighbours": {"embeddings": "sequential", "content_neighbours": 3}}


@pytest.mark.parametrize("rule,placement", [("shared", "content"), ("paths", "content"), ("shared", "neighbours")])
def test_a_checkpoint_alone_gives_new_items_the_sids_the_benchmark_gave(tiny_ml, tmp_path, rule, placement):
    from genret.decoding.export import export_checkpoint

    dm = looc_dm(tiny_ml, **PLACEMENTS[placement])
    dm.cold_sids = rule
    raw_ids, expected = dm.cold_items()
    ckpt = _module_checkpoint(dm, tmp_path / "model.ckpt")
    export_checkpoint(ckpt, tmp_path / "export")
    features = _cold_features(dm)
    for artifact in (ckpt, tmp_path / "export"):
        retriever = Retriever.from_checkpoint(artifact, device="cpu", kernel="torch")
        assert retriever.new_items.rule == rule and retriever.new_items.feature_names == ["title_words", "year", "genres"]
        codes = retriever.add_items(raw_ids, features=features)
        # From the checkpoint's vocabularies, IDF, SVD basis and codebooks alone: the data module's SIDs.
        assert np.array_equal(codes, expected)
        assert torch.equal(retriever.index.codes[dm.n_items:].cpu(), torch.as_tensor(expected))
        out = retriever.retrieve([dm.log_all.item_ids[:3].tolist()], k=retriever.index.n_items, exclude_seen=False)
        assert set(raw_ids.tolist()) <= set(out.items[0])
    # Vectors in the tokenizer's space take the same path; a "title" stands for its words and year.
    retriever = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    assert np.array_equal(retriever.add_items(raw_ids[:3], vectors=dm.cold_vectors[:3]), expected[:3])
    titles = dm.cold_split.log.item_titles
    by_title = [{"title": titles[dm.n_items + j], "genres": features[j]["genres"]} for j in (3, 4)]
    assert np.array_equal(retriever.add_items(raw_ids[3:5], features=by_title), expected[3:5])
    columns = {name: [features[j][name] for j in (5, 6)] for name in features[0]}  # RetrievalFormer's layout
    assert np.array_equal(retriever.add_items(raw_ids[5:7], features=columns), expected[5:7])


@pytest.mark.parametrize("placement", ["content", "neighbours"])
def test_a_checkpoint_is_scored_with_its_own_cold_sids_when_the_data_module_refits_others(tiny_ml, tmp_path, placement):
    from genret.eval.benchmark import cold_item_codes

    dm = looc_dm(tiny_ml, **PLACEMENTS[placement])
    raw_ids, expected = dm.cold_items()
    retriever = Retriever.from_checkpoint(_module_checkpoint(dm, tmp_path / "model.ckpt"), device="cpu", kernel="torch")
    # A data module whose refitted tokenizer differs (here by its seed; in practice the SVDs' last bits
    # move with the BLAS thread count) would give the cold items other SIDs than the checkpoint's encoder.
    refitted = looc_dm(tiny_ml, **PLACEMENTS[placement], seed=7)
    assert not np.array_equal(refitted.cold_items()[1], expected)
    ids, codes = cold_item_codes(refitted, retriever)
    assert np.array_equal(ids, raw_ids) and np.array_equal(codes, expected)


def test_new_items_errors_name_the_fix(tiny_ml, tmp_path):
    from genret.tokenizers.new_items import NewItemEncoder

    dm = looc_dm(tiny_ml)
    ckpt = _module_checkpoint(dm, tmp_path / "model.ckpt")
    retriever = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    raw_ids, codes = dm.cold_items()
    features = _cold_features(dm)
    with pytest.raises(ValueError, match="features beside codes / vectors describe the items for the content term"):
        retriever.add_items(raw_ids, codes, features=features)
    with pytest.raises(ValueError, match="give the new items' codes, vectors or features"):
        retriever.add_items(raw_ids)
    with pytest.raises(ValueError, match="codes or their vectors, not both"):
        retriever.add_items(raw_ids, codes, vectors=np.zeros((len(raw_ids), 8), np.float32))
    with pytest.raises(ValueError, match=r"unknown feature\(s\) \['colour'\]; this model describes items by"):
        retriever.add_items([-1], features=[{"genres": ["Drama"], "colour": "red"}])
    with pytest.raises(ValueError, match="cannot be placed by content; give their SIDs"):
        retriever.add_items([-1], features=[{"genres": ["no-such-genre"], "title_words": ["zzzz"]}])
    with pytest.raises(ValueError, match="2 ids but 1 items described by features"):
        retriever.add_items([-1, -2], features=features[:1])
    with pytest.raises(ValueError, match="the new items' ids repeat"):
        retriever.add_items([-1, -1], features=features[:2])
    with pytest.raises(ValueError, match=r"item vectors must have shape \(m, 8\)"):
        retriever.add_items([-1], vectors=np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"item ids are integers; new ids \[3.7\] are not"):
        retriever.add_items([3.7], codes[:1])  # never cast to item 3
    assert retriever.index.n_items == dm.n_items  # nothing was added by a refused call
    # A catalogue of string ids keeps a longer new id whole (no cast to the old width).
    by_name = Retriever(retriever.model, dm.sid_index, [f"m{i}" for i in range(dm.n_items)], kernel="torch")
    by_name.add_items(["a-much-longer-id"], codes[:1])
    assert by_name.item_ids[-1] == "a-much-longer-id"
    with pytest.raises(ValueError, match=r"item ids are strings; new ids \[7\] are not"):
        by_name.add_items([7], codes[1:2])
    # A checkpoint written before the encoder existed still takes codes.
    old = torch.load(ckpt, weights_only=True)
    del old["genret"]["catalogue"]["new_items"]
    torch.save(old, tmp_path / "old.ckpt")
    retriever = Retriever.from_checkpoint(tmp_path / "old.ckpt", device="cpu", kernel="torch")
    with pytest.raises(ValueError, match="carries no new-item encoder .* pass the items' SIDs as codes"):
        retriever.add_items(raw_ids, features=features)
    retriever.add_items(raw_ids, codes)
    # SIDs not made from content: a new item needs a vector made the same way, or its codes.
    encoder = NewItemEncoder(dm.tokenizer, "shared", None, "sequential PPMI SVD")
    with pytest.raises(ValueError, match="came from sequential PPMI SVD, and it holds nothing that places an item"):
        encoder.vectors(features)
    with pytest.raises(ValueError, match="rule for added items must be one of"):
        NewItemEncoder(dm.tokenizer, "nearest")


def test_cold_items_are_placed_among_their_content_neighbours_in_the_sequential_space(tiny_ml):
    from genret.data.item_features import content_tfidf, raw_item_features
    from genret.tokenizers.content_neighbours import ContentNeighbours

    dm = looc_dm(tiny_ml, embeddings="sequential", content_neighbours=3)
    n_warm, full = dm.n_items, dm.cold_split.log
    assert "placed by their 3 nearest by content" in dm.sid_report["embedding_source"]
    # The catalogue's SIDs come from the training sequences alone: k and the cold items' content move nothing.
    for other in (looc_dm(tiny_ml, embeddings="sequential", content_neighbours=1),
                  looc_dm(tiny_ml, embeddings="sequential", content_neighbours=3, content_features=["genres"])):
        assert np.array_equal(other.codes, dm.codes)
    assert dm.train_log.item.max() < n_warm
    # A cold item's vector: the cosine-weighted mean of its 3 most content-similar warm items' vectors.
    x, _ = content_tfidf(full, None, fit_items=np.arange(n_warm))
    sims = np.asarray((x[n_warm:] @ x[:n_warm].T).todense())
    warm_vectors = dm.content_vectorizer.catalogue_vectors
    checked = 0
    for j in range(len(dm.cold_vectors)):
        top = np.argsort(-sims[j])[:3]
        if np.isclose(*np.sort(sims[j])[[-3, -4]]):
            continue  # a tie at the 3rd place: either item is a right neighbour
        want = (sims[j][top, None] * warm_vectors[top]).sum(0)
        np.testing.assert_allclose(dm.cold_vectors[j], want / np.linalg.norm(want), rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 3
    # The placer survives its state dict; k 1 puts a cold item on its nearest warm item's vector.
    again = ContentNeighbours.from_state_dict(dm.content_vectorizer.state_dict())
    np.testing.assert_array_equal(again.place(x[n_warm:]), dm.cold_vectors)
    one = looc_dm(tiny_ml, embeddings="sequential", content_neighbours=1)
    np.testing.assert_allclose(one.cold_vectors, warm_vectors[sims.argmax(1)], atol=1e-6)
    with pytest.raises(ValueError, match="content_neighbours must be >= 0"):
        SequenceDataModule(data=str(tiny_ml), sid=SIDConfig(embeddings="sequential", content_neighbours=-1))
    # Outside LOOC the placer is fitted on the whole catalogue: a model on sequential SIDs takes new
    # items by their features (an item described as catalogue item 0 lands on item 0's neighbours).
    loo = SequenceDataModule(data=str(tiny_ml), sid=SIDConfig(n_levels=3, codebook_size=K, embeddings="sequential",
                                                              embedding_dim=8, cache_dir=None, content_neighbours=1),
                             max_history=30, batch_size=16, load_options={"low_ratings_as_negatives": False})
    loo.setup()
    encoder = loo.new_item_encoder()
    assert isinstance(encoder.content, ContentNeighbours) and encoder.feature_names
    x_all, _ = content_tfidf(loo.log_all)
    raw = raw_item_features(loo.log_all, encoder.feature_names)
    first = {name: raw[name][0] for name in raw}
    placed = encoder.vectors([first])
    nearest = np.asarray((x_all[:1] @ x_all.T).todense()).ravel()
    assert np.allclose(placed[0], encoder.content.catalogue_vectors[nearest.argmax()], atol=1e-6)


def test_add_items_command_writes_an_export_that_serves_the_new_items(tiny_ml, tmp_path):
    from genret.cli import main

    dm = looc_dm(tiny_ml)
    raw_ids, expected = dm.cold_items()
    ckpt = _module_checkpoint(dm, tmp_path / "model.ckpt")
    features = _cold_features(dm)
    # Features, then vectors, then SIDs: three runs of lines, added in file order.
    lines = [{"id": int(raw_ids[j]), "features": features[j]} for j in range(3)]
    lines += [{"id": int(raw_ids[3]), "vector": dm.cold_vectors[3].tolist()}]
    lines += [{"id": int(r), "sid": c.tolist()} for r, c in zip(raw_ids[4:], expected[4:])]
    items = tmp_path / "new.jsonl"
    items.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert main(["add-items", "--checkpoint", str(ckpt), "--items", str(items), "--out", str(tmp_path / "v2")]) == 0
    served = Retriever.from_checkpoint(tmp_path / "v2", device="cpu", kernel="torch")
    assert served.item_ids.tolist() == dm.log_all.item_ids.tolist() + raw_ids.tolist()
    assert np.array_equal(served.model.item_codes[dm.n_items:].numpy(), expected)
    # The export decodes exactly as the retriever the items were added to in memory.
    in_memory = Retriever.from_checkpoint(ckpt, device="cpu", kernel="torch")
    in_memory.add_items(raw_ids, expected)
    history = [dm.log_all.item_ids[:4].tolist() + raw_ids[:2].tolist()]
    assert served.retrieve(history, k=20) == in_memory.retrieve(history, k=20)
    # It still adds by features (the encoder travelled), and refuses an id it now holds.
    with pytest.raises(ValueError, match="item ids are integers; new ids \\['brand-new'\\] are not"):
        served.add_items(["brand-new"], features=[features[0]])
    assert served.index.n_items == len(served.item_ids) == dm.cold_split.log.n_items  # unchanged by the refusal
    served.add_items([10**6], features=[features[0]])
    with pytest.raises(ValueError, match="already in the catalogue"):
        served.add_items([int(raw_ids[0])], features=[features[0]])
    # Bad lines name the line and the forms; nothing is written.
    items.write_text(json.dumps({"id": 1, "colour": "red"}) + "\n")
    with pytest.raises(SystemExit, match=r"new.jsonl:1: expected .* one of \"features\", \"vector\", \"sid\""):
        main(["add-items", "--checkpoint", str(ckpt), "--items", str(items), "--out", str(tmp_path / "v3")])
    assert not (tmp_path / "v3").exists()


def test_spread_added_items_keeps_existing_sids_and_takes_free_codes():
    class Book:  # a 1-level "tokenizer": decode = the chosen centroid
        codebooks_ = [torch.tensor([[0.0], [1.0], [2.0], [3.0]])]

        def decode(self, codes):
            return self.codebooks_[0].numpy()[np.asarray(codes)[:, 0]]

    existing = np.array([[1], [2]])
    new = spread_added_items(Book(), np.array([[1.1], [1.2], [2.9]]), np.array([[1], [1], [3]]), existing)
    # 1.1 is on taken SID 1 -> the nearest free code, 0 (2 is nearer but taken); 1.2 -> 3, the last
    # free one; 2.9's greedy 3 is then taken and nothing is free, so it shares SID 3.
    assert new[:, 0].tolist() == [0, 3, 3]
    assert existing.tolist() == [[1], [2]]


def test_clear_errors(tiny_ml, tmp_path):
    from genret.data.item_features import content_tfidf
    from genret.training.dualgr_module import DualGRModule

    for embeddings in ("sequential", "collaborative", "auto"):
        with pytest.raises(ValueError, match="data.sid.embeddings: content .* data.sid.content_neighbours: K .* "
                                             "model.use_item_id: false"):
            SequenceDataModule(data=str(tiny_ml), sid=SIDConfig(embeddings=embeddings), protocol="looc")
    with pytest.raises(ValueError, match="data.sid.embeddings: content"):  # neighbours need interaction vectors
        SequenceDataModule(data=str(tiny_ml), sid=SIDConfig(embeddings="auto", content_neighbours=3), protocol="looc")
    with pytest.raises(ValueError, match="data.protocol must be one of"):
        SequenceDataModule(data=str(tiny_ml), protocol="cold")
    dm = looc_dm(tiny_ml)
    with pytest.raises(ValueError, match="set model.use_item_id: false"):
        DualGRModule(use_item_id=True).build_from_data(dm)
    DualGRModule(use_item_id=False).build_from_data(dm)  # the fix works
    # An item without any feature value cannot be placed by content.
    log = load_dataset(tiny_ml, low_ratings_as_negatives=False)
    log.item_titles = list(log.item_titles)
    log.item_titles[3] = ""
    log.item_features = {k: v.copy() for k, v in log.item_features.items()}
    log.item_features["genres"][3] = 0
    log.item_features["genre"][3] = 0
    with pytest.raises(ValueError, match=r"1 item\(s\) of tiny-ml have no feature value.*raw ids \[4\]"):
        content_tfidf(log)
    with pytest.raises(ValueError, match="'item_id' is not content"):
        content_tfidf(log, ["genres", "item_id"])


@pytest.mark.parametrize("family", ["dualgr", "tiger"])
def test_benchmark_looc_writes_cold_and_warm_blocks(tiny_ml, tmp_path, family, monkeypatch):
    from genret.cli import main

    out = tmp_path / family
    overrides = ["--trainer.max_epochs", "1", "--data.cold_seed_users", "8", "--data.cold_valid_users", "8",
                 "--data.sid.codebook_size", str(K), "--data.sid.embedding_dim", "8", "--data.sid.cache_dir", "null",
                 "--data.side_features", "[]"]
    argv = ["benchmark", "--model", family, "--data", str(tiny_ml), "--config", str(CONFIG), "--out", str(out),
            "--protocol", "looc", "--ks", "5,20", *overrides, "--kernel", "torch"]  # conftest's TRITON_INTERPRET: slow Triton
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["cold"]) == set(metrics["test"]) == set(metrics["warm"]) == set(metrics["cold_val"])
    assert "recall@20" in metrics["cold"]
    assert metrics["warm"] == metrics["test"]
    content = metrics["baselines"]["content"]
    assert set(content) == {"cold", "warm", "cold_val"} and set(content["cold_val"]) == set(content["cold"])
    assert metrics["cold"]["n_users"] == metrics["looc"]["cold_users"] == content["cold"]["n_users"]
    assert metrics["cold_val"]["n_users"] == metrics["looc"]["cold_valid_users"] == content["cold_val"]["n_users"] > 0
    assert metrics["vs_content"]["cold"]["hr@20"]["diff"] == pytest.approx(
        metrics["cold"]["hr@20"] - content["cold"]["hr@20"])
    # Every item outside the trained catalogue joined it: the test and the validation cold items.
    looc = metrics["looc"]
    assert metrics["cold_start"]["cold_items_added"] == looc["cold_items"] > 0
    assert looc["cold_items"] == looc["test_cold_items"] + looc["valid_cold_items"] and looc["valid_cold_items"] > 0
    # --resume reads the finished run back (run_result.json) with its LOOC blocks.
    (out / "metrics.json").unlink()
    assert main([*argv, "--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    keys = ("cold", "cold_val", "warm", "looc", "baselines")
    assert {k: again[k] for k in keys} == {k: metrics[k] for k in keys}
    if family == "dualgr":
        # A validation-only run of the same model (a sweep's): it ranks the validation cold users,
        # with the same numbers as the full run, and never the test or cold test users.
        from genret.eval import benchmark, retrievalformer_benchmark

        ranked_sets = []
        for module, name in ((benchmark, "retriever_ranked_lists"), (retrievalformer_benchmark, "content_ranked_lists")):
            original = getattr(module, name)

            def recorded(*args, _original=original, _name=name, **kwargs):
                ranked_sets.append((_name, args[1]))  # (retriever | vectors, EvalSet, ...)
                return _original(*args, **kwargs)
            monkeypatch.setattr(module, name, recorded)
        res = benchmark.run_generative(CONFIG, tmp_path / "valid_only", data=str(tiny_ml), ks=(5, 20),
                                       overrides=["--data.protocol", "looc", *overrides], kernel="torch",
                                       checkpoint=out / "model.ckpt", stages=("valid",))
        dm = res["datamodule"]
        read = {id(es) for _, es in ranked_sets}
        assert id(dm.eval_sets["cold_valid"]) in read and id(dm.eval_sets["valid"]) in read
        assert id(dm.eval_sets["cold"]) not in read and id(dm.eval_sets["test"]) not in read
        assert all(es.stage == "valid" for _, es in ranked_sets)
        assert "test" not in res and "cold" not in res
        assert set(res["extra"]) == {"cold_val", "looc", "cold_start", "vs_content"}
        assert set(res["baselines"]["content"]) == {"cold_val"} and set(res["extra"]["vs_content"]) == {"cold_val"}
        assert res["extra"]["cold_val"] == metrics["cold_val"] and res["val"] == metrics["val"]
        assert res["baselines"]["content"]["cold_val"] == content["cold_val"]
        record = json.loads((tmp_path / "valid_only" / "run_result.json").read_text())["result"]
        assert "cold_val" in record["extra"] and "cold" not in record["extra"] and "warm" not in record["extra"]
        assert "test" not in record and "cold" not in record
        # A sweep (validation only) reports the validation cold users beside validation.
        monkeypatch.undo()
        sweep = tmp_path / "sweep"
        assert main(["benchmark", "--model", family, "--data", str(tiny_ml), "--config", str(CONFIG), "--out",
                     str(sweep), "--protocol", "looc", "--ks", "5,20", *overrides, "--kernel", "torch",
                     "--sweep", "data.cold_sids=spread"]) == 0
        row = json.loads((sweep / "metrics.json").read_text())["sweep"]["results"]["spread"]
        assert set(row["cold_val"]["mean"]) >= {"recall@20", "ndcg@20"} and row["cold_val"]["n_users"] > 0
        assert "cold val HR@" in (sweep / "report.md").read_text()
        # With --checkpoint a sweep of an evaluation-time data setting scores that one model per value:
        # "paths" (the config's scheme) is the full run's own cold validation block; "shared" differs
        # only in the cold SIDs.
        again = tmp_path / "sweep_checkpoint"
        assert main(["benchmark", "--model", family, "--data", str(tiny_ml), "--config", str(CONFIG), "--out",
                     str(again), "--protocol", "looc", "--ks", "5,20", *overrides, "--kernel", "torch",
                     "--checkpoint", str(out / "model.ckpt"), "--sweep", "data.cold_sids=shared,paths"]) == 0
        rows = json.loads((again / "metrics.json").read_text())["sweep"]["results"]
        own = rows["paths"]["cold_val"]["mean"]
        assert "recall@20" in own and own == {k: metrics["cold_val"][k] for k in own}
        assert rows["paths"]["paired_cold_val"] is not None and rows["shared"]["paired_cold_val"] is None
        with pytest.raises(SystemExit):  # a model setting cannot change under a trained checkpoint
            main(["benchmark", "--model", family, "--data", str(tiny_ml), "--config", str(CONFIG), "--out",
                  str(tmp_path / "refused"), "--protocol", "looc", *overrides, "--checkpoint", str(out / "model.ckpt"),
                  "--sweep", "model.config.alpha=0,0.1"])
    # The ID-based SIDs of the plain ML-1M config are refused with the fix named.
    with pytest.raises(ValueError, match="data.sid.embeddings: content"):
        main(["benchmark", "--model", "dualgr", "--data", str(tiny_ml), "--config",
              str(CONFIG.parent / "dualgr_ml1m.yaml"), "--out", str(tmp_path / "bad"), "--protocol", "looc"])


def test_benchmark_looc_over_seeds_averages_the_blocks_and_pairs_with_the_content_baseline(tiny_ml, tmp_path):
    from genret.cli import main

    out = tmp_path / "seeds"
    argv = ["benchmark", "--model", "dualgr", "--data", str(tiny_ml), "--config", str(CONFIG), "--out", str(out),
            "--protocol", "looc", "--ks", "5,20", "--trainer.max_epochs", "1", "--data.cold_seed_users", "8",
            "--data.sid.codebook_size", str(K), "--data.sid.embedding_dim", "8", "--data.sid.cache_dir", "null",
            "--data.side_features", "[]", "--kernel", "torch"]
    assert main([*argv, "--seeds", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    runs = {s: json.loads((out / f"seed_{s}" / "run_result.json").read_text())["result"] for s in (0, 1)}
    assert metrics["seeds"] == [0, 1] and runs[0]["seed"] != runs[1]["seed"]
    for block, key in (("cold", "cold"), ("warm", "test")):
        assert metrics[block]["recall@20"] == pytest.approx(np.mean([r[key]["recall@20"] for r in runs.values()]))
        assert metrics[block]["n_users"] == runs[0][key]["n_users"] > 0
    # The baseline is the same on both seeds' users; the model's difference to it over seeds is the
    # difference of the means, and every seed keeps its own run's interval.
    content = metrics["baselines"]["content"]["cold"]
    assert content["hr@20"] == runs[0]["baselines"]["content"]["cold"]["hr@20"]
    paired = metrics["vs_content"]["cold"]["hr@20"]
    assert paired["n_seeds"] == 2 and paired["diff"] == pytest.approx(metrics["cold"]["hr@20"] - content["hr@20"])
    assert paired["ci95"][0] <= paired["diff"] <= paired["ci95"][1]
    per_seed = metrics["looc_seeds"]["per_seed"]
    assert [per_seed[str(s)]["vs_content"]["cold"]["hr@20"]["diff"] for s in (0, 1)] == pytest.approx(
        paired["per_seed"])
    assert "Cold start over seeds" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):  # Table 2 under LOOC is not a thing this command writes
        main([*argv, "--ablations"])


def test_looc_seed_summary_refuses_runs_of_different_splits():
    from genret.eval.looc_seeds import summarize_looc_seeds

    def run(n, hits):
        block = {"hr@20": hits / n, "recall@20": hits / n, "n_users": n}
        ranks = np.r_[np.zeros(hits, int), -np.ones(n - hits, int)]
        return {"cold": block, "test": block, "cold_ranks": ranks, "content_cold_ranks": np.full(n, -1),
                "baselines": {"content": {"cold": dict(block, **{"hr@20": 0.0, "recall@20": 0.0})}}}
    summary = summarize_looc_seeds({0: run(10, 4), 1: run(10, 2)})
    assert summary["cold"]["mean"]["recall@20"] == pytest.approx(0.3)
    assert summary["vs_content"]["cold"]["hr@20"]["diff"] == pytest.approx(0.3)
    assert summary["vs_content"]["cold"]["hr@20"]["per_seed"] == pytest.approx([0.4, 0.2])
    with pytest.raises(ValueError, match="different numbers of cold users"):
        summarize_looc_seeds({0: run(10, 4), 1: run(12, 2)})
    with pytest.raises(ValueError, match="no cold users' results"):
        summarize_looc_seeds({0: {"test": {"hr@20": 0.1}}})


def test_benchmark_looc_cold_validation_too_large_names_the_fix(tiny_ml, tmp_path, capsys):
    from genret.cli import main

    # 500 validation users: far more than this tiny data has. The CLI answers with the error's one
    # line and exit status 2, not a traceback.
    assert main(["benchmark", "--model", "dualgr", "--data", str(tiny_ml), "--config", str(CONFIG), "--out",
                 str(tmp_path / "big"), "--protocol", "looc", "--data.cold_seed_users", "8",
                 "--data.cold_valid_users", "500", "--data.sid.cache_dir", "null"]) == 2
    err = capsys.readouterr().err
    assert re.search("genret benchmark: error: .*valid_seed_users must lie in 0..* lower data.cold_valid_users", err)


def test_benchmark_looc_on_data_with_exposure_negatives(tmp_path):
    # With negatives the benchmark also reports the users whose history holds some: under LOOC its
    # masks must cover the users the run ranked (the warm test users), not the whole warm split.
    from genret.cli import main

    out = tmp_path / "synthetic"
    assert main(["benchmark", "--model", "dualgr", "--data", "synthetic:300x200", "--config", str(CONFIG),
                 "--out", str(out), "--protocol", "looc", "--ks", "5,20", "--trainer.max_epochs", "1",
                 "--data.cold_seed_users", "20", "--data.cold_valid_users", "0", "--data.sid.codebook_size", "8",
                 "--data.sid.embedding_dim", "8",
                 "--data.sid.cache_dir", "null", "--data.sid.content_features", "null", "--data.load_options", "{}",
                 "--data.side_features", "[]", "--kernel", "torch"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n_users"] == metrics["looc"]["warm_test_users"] and metrics["cold"]["n_users"] > 0
    # The popularity row is on the same (warm) test users.
    assert metrics["baselines"]["popularity"]["test"]["n_users"] == metrics["test"]["n_users"]


def test_cold_sids_must_be_a_known_scheme():
    with pytest.raises(ValueError, match="data.cold_sids must be 'shared', 'spread' or 'paths'"):
        SequenceDataModule(data="synthetic", protocol="looc", cold_sids="nearest",
                           sid=SIDConfig(embeddings="content"))


def test_amazon_looc_recipe_runs_on_copies_without_titles(tmp_path, amazon_copy):
    """configs/dualgr_amazon_looc.yaml runs unchanged on a category with no titles.tsv (its SIDs come from
    the attributes alone) and stops with the missing content named when only sequential.txt is there."""
    from genret.training.run import build

    config = TESTS.parent / "configs" / "dualgr_amazon_looc.yaml"
    small = ["--data.cold_seed_users", "8", "--data.sid.codebook_size", str(K), "--data.sid.embedding_dim", "8",
             "--data.sid.cache_dir", "null"]
    reports = {}
    for name, titles in (("with_titles", True), ("no_titles", False)):
        folder = amazon_copy(tmp_path / name, titles=titles, attributes=True)
        _, dm, _ = build("dualgr", config, tmp_path / f"run_{name}", small, str(folder))
        dm.setup()
        raw_ids, codes = dm.cold_items()
        assert len(raw_ids) == len(dm.cold_split.cold_items) > 0 and codes.shape == (len(raw_ids), 3)
        assert not np.isin(dm.cold_split.train.item, dm.cold_split.cold_items).any()
        reports[name] = json.dumps(dm.sid_report)
    assert "title" in reports["with_titles"] and "title" not in reports["no_titles"]
    assert "attributes" in reports["no_titles"]
    folder = amazon_copy(tmp_path / "sequential_only", titles=False, attributes=False)
    _, dm, _ = build("dualgr", config, tmp_path / "run_sequential_only", small, str(folder))
    with pytest.raises(ValueError, match="no item content features"):
        dm.setup()


def test_any_data_set_is_described_by_an_item_feature_table(tmp_path):
    """data.item_feature_table gives a generic interaction table content: content SIDs under LOOC
    (cold items placed from the table's columns), the content term's rows, the baseline; a table
    column named like a feature the data has, or no item of the data in it, is refused by name."""
    from genret.data.item_features import DataError

    rng = np.random.default_rng(0)
    group = np.arange(40) % 5
    rows = ["user_id,item_id,time"]
    for user in range(60):
        items = rng.choice(np.flatnonzero(group == user % 5), size=6, replace=False)
        rows += [f"u{user},i{item},{t}" for t, item in enumerate(items)]
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    table = tmp_path / "items.csv"
    table.write_text("item_id,shelf,tags\n" + "".join(
        f"i{i},s{group[i]},t{i % 3}|u{group[i]}\n" for i in range(40) if i != 11))  # i11: not described
    sid = SIDConfig(n_levels=3, codebook_size=K, embeddings="content", embedding_dim=8, cache_dir=None)
    dm = SequenceDataModule(data=str(tmp_path / "events.csv"), sid=sid, max_history=20, max_negatives=0,
                            batch_size=8, protocol="looc", cold_seed_users=6, item_feature_table=str(table))
    with pytest.raises(ValueError, match="have no feature value in \\['shelf', 'tags'\\].*describe them"):
        dm.setup()
    table.write_text(table.read_text() + "i11,s1,t2\n")
    dm = SequenceDataModule(data=str(tmp_path / "events.csv"), sid=sid, max_history=20, max_negatives=0,
                            batch_size=8, protocol="looc", cold_seed_users=6, item_feature_table=str(table))
    dm.setup()
    assert dm.content_vectorizer.names == ["shelf", "tags"]
    raw_ids, codes = dm.cold_items()
    assert len(raw_ids) > 0 and codes.shape == (len(raw_ids), 3)
    term = dm.content_term()
    assert term.names == ["shelf", "tags"] and term.n_items == dm.n_items
    # Items of one shelf share content: an item's nearest row (itself aside) is on its shelf.
    sims = (term.rows @ term.rows.T).toarray()
    np.fill_diagonal(sims, -1)
    shelf = np.array([int(str(raw)[1:]) % 5 for raw in dm.log_all.item_ids])
    assert (shelf[sims.argmax(1)] == shelf).all()
    clash = tmp_path / "clash.csv"
    clash.write_text("item_id,item_id_2,title_words\ni1,a,b\n")
    with pytest.raises(DataError, match="column\\(s\\) \\['title_words'\\] name features"):
        SequenceDataModule(data=str(tmp_path / "events.csv"), sid=sid, item_feature_table=str(clash)).setup()
    stranger = tmp_path / "stranger.csv"
    stranger.write_text("item_id,shelf\nx1,a\n")
    with pytest.raises(DataError, match="none of the 40 items"):
        SequenceDataModule(data=str(tmp_path / "events.csv"), sid=sid, item_feature_table=str(stranger)).setup()
