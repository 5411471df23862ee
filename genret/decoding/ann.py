"""Approximate nearest-neighbour (maximum inner product) search over item vectors with faiss.

Kinds: "flat" (exact, faiss's brute force: the reference), "hnsw" (graph; M links per node,
efSearch candidates at query time), "ivfpq" (inverted lists + product quantisation; nlist lists,
nprobe searched, m sub-quantisers of 8 bits). Scores are inner products (the two-tower score).

An index is saved beside its checkpoint as `<checkpoint>.<kind>.faiss` plus a JSON sidecar that
names its format version, kind, parameters, item count and the checkpoint it was built from; both
are written to temporary names and renamed, so a reader sees the old pair or the new one.

faiss is optional (`pip install genret[dev]` or `pip install faiss-cpu`; `faiss-gpu` where
available: a GPU index is used with `device="cuda"`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("flat", "hnsw", "ivfpq")
INDEX_VERSION = 1


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("ANN retrieval needs faiss: pip install faiss-cpu (or faiss-gpu), "
                          "or install genret's dev extra") from None
    return faiss


@dataclass
class ANNIndex:
    """A faiss index over item vectors (row i = dense item i).

    Build with `ANNIndex.build(vectors, kind, **params)`; search with `search(queries, k)`.
    """

    kind: str
    index: Any
    n_items: int
    dim: int
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "hnsw", hnsw_m: int = 32, ef_construction: int = 80,
              ef_search: int = 128, nlist: int | None = None, nprobe: int = 32, pq_m: int | None = None,
              train_size: int = 200_000, seed: int = 0, coarse: str = "flat",
              kmeans_iters: int | None = None, refine: int = 0) -> "ANNIndex":
        """Index `vectors` (n, d) float32 for inner-product search.

        Args:
            kind: "flat", "hnsw" or "ivfpq".
            hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths.
            nlist: IVF lists (default ~4 sqrt(n), the paper's 4096 at 1M). nprobe: lists searched.
            pq_m: PQ sub-quantisers (default d / 2: 2 dims per 8-bit code).
            train_size: vectors sampled to train IVF-PQ's quantisers.
            coarse: IVF-PQ's list assignment: "flat" (exact, nlist dot products per vector) or
                "hnsw" (a graph over the list centroids: adding 10M vectors takes minutes, not an
                hour, on a CPU).
            kmeans_iters: k-means iterations for the list centroids (faiss's default 25 if None).
            refine: IVF-PQ only: > 0 re-ranks refine * k PQ candidates by their exact inner product
                (faiss IndexRefineFlat; keeps a second, full copy of the vectors).
        """
        faiss = import_faiss()
        if kind not in KINDS:
            raise ValueError(f"unknown ANN index kind {kind!r}; choose from {KINDS}")
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or not len(x):
            raise ValueError(f"item vectors must be a non-empty (n, d) array, got shape {x.shape}")
        n, d = x.shape
        params: dict[str, Any] = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        else:
            nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))
            pq_m = pq_m or max(1, d // 2)
            if d % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the vector width {d}")
            if coarse not in ("flat", "hnsw"):
                raise ValueError(f"coarse must be 'flat' or 'hnsw', got {coarse!r}")
            quantizer = faiss.IndexFlatIP(d) if coarse == "flat" else faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            if kmeans_iters is not None:
                index.cp.niter = kmeans_iters
            rng = np.random.default_rng(seed)
            sample = x[rng.choice(n, size=min(n, max(train_size, 256 * 39)), replace=False)] if n > train_size else x
            index.train(sample)
            index.nprobe = min(nprobe, nlist)
            params = {"nlist": nlist, "nprobe": index.nprobe, "pq_m": pq_m, "coarse": coarse}
            if refine > 0:
                index = faiss.IndexRefineFlat(index)
                index.k_factor = float(refine)
                params["refine"] = refine
        index.add(x)
        return cls(kind, index, n, d, params)

    def add(self, vectors: np.ndarray) -> None:
        """Append items (their dense ids continue from n_items) without rebuilding."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"new item vectors must be (n, {self.dim}), got {x.shape}")
        self.index.add(x)
        self.n_items += len(x)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: scores (m, k) float32 and items (m, k) int64 (-1 where fewer found)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores, items = self.index.search(q, k)
        return scores, items.astype(np.int64)

    def tune(self, vectors: np.ndarray, queries: np.ndarray, k: int = 100, target_recall: float = 0.95,
             max_breadth: int | None = None) -> dict[str, Any]:
        """Set the search breadth (HNSW efSearch, IVF nprobe) to the smallest value, doubling, whose
        recall@k against exact search of `vectors` (the indexed items, row i = item i) over
        `queries` (e.g. user vectors of validation histories) reaches `target_recall`. A graph or
        list layout that suits one catalogue's size and spread need not suit another's: at 1M
        synthetic items HNSW needed efSearch 1024 for 0.95 where 256 gave it at 100k
        (docs/experiments/2026-12-06-ann-at-scale.md). The choice and its measured recall join
        `params` (saved in the sidecar). Where no breadth up to `max_breadth` (default: 16,384
        for HNSW, every list for IVF) reaches the target, the largest is kept with a warning.

        Returns:
            {"param": "ef_search" / "nprobe" (None for flat), "value", "recall", "target_recall",
            "k", "queries", "ladder": [[value, recall], ...]}.
        """
        import warnings

        faiss = import_faiss()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if x.shape != (self.n_items, self.dim):
            raise ValueError(f"tune needs the {self.n_items} indexed item vectors of width {self.dim}, got {x.shape}")
        if q.ndim != 2 or q.shape[1] != self.dim or not len(q):
            raise ValueError(f"tune needs (m, {self.dim}) query vectors, got {q.shape}")
        if not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        k = min(int(k), self.n_items)
        report: dict[str, Any] = {"param": None, "value": None, "recall": 1.0, "target_recall": target_recall,
                                  "k": k, "queries": len(q), "ladder": []}
        if self.kind == "flat":
            return report
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(x)
        truth = exact.search(q, k)[1]
        if self.kind == "hnsw":
            param, ladder_max = "ef_search", max_breadth or 16_384
            values = [v for v in (max(k, 16) * 2 ** i for i in range(20)) if v < ladder_max] + [ladder_max]

            def set_breadth(v):
                self.index.hnsw.efSearch = v
        else:
            param, ivf = "nprobe", faiss.extract_index_ivf(self.index)
            ladder_max = min(max_breadth or ivf.nlist, ivf.nlist)
            values = [v for v in (2 ** i for i in range(31)) if v < ladder_max] + [ladder_max]

            def set_breadth(v):
                ivf.nprobe = v
        for value in values:
            set_breadth(value)
            found = self.search(q, k)[1]
            recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))
            report["ladder"].append([value, recall])
            if recall >= target_recall:
                break
        else:
            warnings.warn(f"{self.kind} index: recall@{k} {recall:.4f} at {param} {value}, the largest tried, is "
                          f"below the target {target_recall}; search it exact, or rebuild with a larger graph "
                          f"(hnsw_m, ef_construction) / more lists", stacklevel=2)
        report.update(param=param, value=value, recall=recall)
        self.params[param] = value
        self.params["tuned"] = {key: report[key] for key in ("recall", "target_recall", "k", "queries")}
        return report

    # ------------------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, source: str | None = None) -> Path:
        """Write the index and its JSON sidecar atomically; returns the index path."""
        faiss = import_faiss()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        faiss.write_index(self.index, str(tmp))
        meta = {"version": INDEX_VERSION, "kind": self.kind, "n_items": self.n_items, "dim": self.dim,
                "params": self.params, "source": source, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        meta_path = path.with_name(path.name + ".json")
        meta_tmp = meta_path.with_name(f".{meta_path.name}.tmp")
        meta_tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)
        os.replace(meta_tmp, meta_path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ANNIndex":
        """Read an index written by `save`; checks the sidecar's version."""
        faiss = import_faiss()
        path = Path(path)
        meta_path = path.with_name(path.name + ".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"no ANN index at {path} (or its {meta_path.name}); build one with "
                                    f"retriever.build_index(kind) or `python benchmarks/bench_ann.py`")
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != INDEX_VERSION:
            raise RuntimeError(f"{path} has ANN index format {meta.get('version')}; this genret reads "
                               f"{INDEX_VERSION}: rebuild it")
        index = faiss.read_index(str(path))
        if "ef_search" in meta["params"]:
            index.hnsw.efSearch = meta["params"]["ef_search"]
        if "nprobe" in meta["params"]:
            faiss.extract_index_ivf(index).nprobe = meta["params"]["nprobe"]
        return cls(meta["kind"], index, int(meta["n_items"]), int(meta["dim"]), meta["params"])


def index_path(checkpoint: str | os.PathLike, kind: str) -> Path:
    """Where the `kind` index of a checkpoint lives: beside it, `<checkpoint>.<kind>.faiss`."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.name}.{kind}.faiss")


def exclude_and_pad(items: np.ndarray, scores: np.ndarray, k: int,
                    exclude: list[set] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Drop -1 and excluded items from over-fetched ANN rows and keep the first k (-1 padded)."""
    m = len(items)
    out_items = np.full((m, k), -1, np.int64)
    out_scores = np.full((m, k), -np.inf, np.float32)
    for u in range(m):
        keep = items[u] >= 0
        if exclude is not None and exclude[u]:
            keep &= ~np.isin(items[u], list(exclude[u]))
        row, sc = items[u][keep][:k], scores[u][keep][:k]
        out_items[u, :len(row)], out_scores[u, :len(row)] = row, sc
    return out_items, out_scores
