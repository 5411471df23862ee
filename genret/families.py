"""The model families: one registry entry each, looked up by `genret train | benchmark | decode | serve`.

A family is a set of files that plug in: a config dataclass and an `nn.Module` (genret/models), a
LightningModule and a LightningDataModule (genret/training), and a retriever with
`from_checkpoint(path, ...)` and `retrieve(histories, k, ...)` (genret/decoding). Its entry here
names those classes by import path, so importing the registry costs nothing; a new family is new
files and one entry, never a new branch in every command.

`kind` says what a family is: "generative" (beam search over SIDs; `genret benchmark` runs it,
with the paper's ablations, through genret.eval.benchmark.run_generative), "embedding" (exact
top-K over item vectors), "generate-rank" (GRank: a generator's top-k1, re-scored by a ranker) or
"counts" (no training: popularity); every non-generative family names its benchmark run in
`benchmark`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    kind: str
    retriever: str  # "module:Class": from_checkpoint / retrieve / item_ids / side_features / model_version
    module: str | None = None  # LightningModule, "module:Class"
    datamodule: str | None = None  # LightningDataModule, "module:Class"
    checkpoint_family: str | None = None  # the name its checkpoints carry (several families can share one)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # model.config keys set on top of the YAML
    callbacks: tuple[str, ...] = ()  # Lightning callbacks every run of the family needs, "module:Class"
    # `genret benchmark`'s run for the family, "module:function" (family name, config, out_dir, data=,
    # overrides=, ks=) -> result dict (see genret.eval.benchmark.run_embedding); generative families
    # run through genret.eval.benchmark.run_generative, which also serves the ablations.
    benchmark: str | None = None
    scores_cold_items: bool = False  # items are scored from their features, so `--protocol looc` applies

    def module_class(self) -> type:
        return load_class(self._require(self.module, "LightningModule"))

    def datamodule_class(self) -> type:
        return load_class(self._require(self.datamodule, "LightningDataModule"))

    def retriever_class(self) -> type:
        return load_class(self.retriever)

    def _require(self, path: str | None, what: str) -> str:
        if path is None:
            raise ValueError(f"family {self.name!r} has no {what}: it is not trained")
        return path


_DUALGR = dict(kind="generative", retriever="genret.decoding.retriever:Retriever",
               module="genret.training.dualgr_module:DualGRModule",
               datamodule="genret.training.sequence_datamodule:SequenceDataModule", checkpoint_family="dualgr",
               scores_cold_items=True)  # through SIDs from item content, added to the index after training
_EMBEDDING = dict(kind="embedding", retriever="genret.decoding.embedding_retriever:EmbeddingRetriever",
                  module="genret.training.embedding_module:KuaiFormerModule",
                  datamodule="genret.training.embedding_datamodule:KuaiFormerDataModule",
                  checkpoint_family="kuaiformer", benchmark="genret.eval.benchmark:run_embedding",
                  callbacks=("genret.eval.embedding_validation:EmbeddingValidation",))

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("dualgr", "DualGR: encoder-free SID decoder with DBR, S2D and ENTP", **_DUALGR),
    Family("tiger", "TIGER-style SID decoder: DualGR with DBR, S2D and ENTP off", **_DUALGR,
           model_overrides={"use_dbr": False, "use_s2d": False, "use_entp": False}),
    Family("kuaiformer", "KuaiFormer: multi-interest embedding retriever, exact top-K", **_EMBEDDING),
    Family("sasrec", "SASRec: KuaiFormer's one-interest, last-position setting, exact top-K", **_EMBEDDING),
    Family("grank", "GRank: target-aware generator (MIPS top-k1), then a cross-attention ranker",
           kind="generate-rank",
           retriever="genret.decoding.grank_retriever:GRankRetriever",
           module="genret.training.grank_module:GRankModule",
           datamodule="genret.training.grank_datamodule:GRankDataModule", checkpoint_family="grank",
           benchmark="genret.eval.grank_benchmark:run_grank",
           callbacks=("genret.eval.grank_validation:GRankValidation",
                      "genret.eval.grank_negatives:GeneratorHardNegatives")),
    Family("retrievalformer", "RetrievalFormer: feature-based item tower, exact or faiss ANN top-K, cold items",
           kind="embedding", retriever="genret.decoding.retrievalformer_retriever:RetrievalFormerRetriever",
           module="genret.training.retrievalformer_module:RetrievalFormerModule",
           datamodule="genret.training.retrievalformer_datamodule:RetrievalFormerDataModule",
           checkpoint_family="retrievalformer", benchmark="genret.eval.retrievalformer_benchmark:run_retrievalformer",
           scores_cold_items=True,
           callbacks=("genret.eval.embedding_validation:EmbeddingValidation",)),
    Family("popularity", "most popular training items (a baseline)", kind="counts",
           retriever="genret.decoding.popularity:PopularityRecommender",
           benchmark="genret.eval.benchmark:run_popularity"),
)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose from {', '.join(FAMILIES)}") from None


def family_for_config(config: str | Path) -> Family:
    """The family a YAML trains, from its file name (`sasrec_ml1m.yaml` -> sasrec); DualGR otherwise
    (the quickstart and paper configs)."""
    stem = Path(config).stem
    for name in sorted(FAMILIES, key=len, reverse=True):
        if stem == name or stem.startswith(name + "_"):
            return FAMILIES[name]
    return FAMILIES["dualgr"]


def load_class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def load_retriever(path: str | Path, **options: Any):
    """The retriever of whichever family wrote the checkpoint (or `genret export` directory) at `path`.

    `options` go to its `from_checkpoint`; those it does not take (a beam width for an embedding
    model) are left out, so one call serves every family.
    """
    import inspect

    from genret.decoding.export import artifact_family

    name = artifact_family(path)
    for family in FAMILIES.values():
        if family.checkpoint_family == name:
            cls = family.retriever_class()
            params = inspect.signature(cls.from_checkpoint).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                options = {k: v for k, v in options.items() if k in params}
            return cls.from_checkpoint(path, **options)
    raise RuntimeError(f"{path} holds a {name!r} model, which no registered family serves")
