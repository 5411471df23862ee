"""LightningModule for GRank: generator, auxiliary candidate tokens and ranker trained end to end.

L = ntp_weight * L_NTP + aux_weight * L_SA + ranker_weight * L_CA (+ position_loss_weight * the
dense next-item loss on the history positions, not in the paper: one target per cut learns slowly
on a CPU budget). Every term is InfoNCE at one `temperature`:
  * L_NTP: h_u against the whole catalogue ("full", our catalogues are small) or the batch's
    targets with log Q ("in_batch", for large ones).
  * L_SA: each example's target and `aux_negatives` other targets of the batch as candidate tokens;
    their s_sa scores, target first; with `aux_log_q` each score less log Q of its item (those
    targets are drawn by popularity; not in the paper, which gives no correction).
  * L_CA: the ranker's s_ca for the target, `hard_negatives` drawn uniformly from a generator's top
    `hard_pool` (no gradient; the paper is silent, but a re-ranker only ever sees the generator's top
    items) and `ranker_negatives` other targets of the batch. Whose top items is
    `hard_negatives_from`: "own" = GRank's own generator, recomputed every step (history and target
    removed); "generator" = the external `generator` checkpoint (e.g. DualGR) whose candidates the
    ranker re-orders at serving: its top `hard_pool` for each training user's last cut (history
    excluded) is computed once when fitting starts (frozen model, then freed; the family's callback
    genret.eval.grank_negatives.GeneratorHardNegatives, as training may not import decoding), and the ranker
    trains on the batch's last-cut examples only, against those cached items (target and padding
    removed).
With `freeze_generator` only the ranker's own layers train (the item table belongs to the
generator), so the generator's candidates cannot move; `init_from` loads a GRank checkpoint's
weights first (e.g. a pure-generator run).

Validation runs the serving pipeline on every validation user (MIPS top-`val_k1`, history
excluded, then the ranker; under `hard_negatives_from: generator` the external generator's top
`val_k1`, cached before training) and genret.eval.grank_validation logs val/hr@K, val/ndcg@K
(generator + ranker at the best of `blend_choices`; `monitor` picks the kept epoch among them),
val/gen_* (generator only) and the candidate set's recall.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from genret.models.grank import GRank, GRankConfig, blended_scores, info_nce
from genret.models.kuaiformer import sampling_log_q
from genret.training.family_module import ItemSoftmaxModule

log = logging.getLogger(__name__)

NTP_NEGATIVES = ("full", "in_batch")
HARD_NEGATIVE_SOURCES = ("own", "generator")


class GRankModule(ItemSoftmaxModule):
    """Trains GRank (see the module docstring).

    Args:
        config: GRankConfig (n_items, max_len, long_len come from the data).
        ntp_weight, aux_weight, ranker_weight: lambda_0..2 of the three InfoNCE terms (0 = off; the
            ablations: pure generator = aux 0 and ranker 0, ...).
        position_loss_weight: dense next-item loss on the history positions (0 = off).
        temperature: InfoNCE temperature of all terms.
        ntp_negatives: "full" or "in_batch" (log Q corrected).
        aux_negatives: other in-batch targets appended as candidate tokens per example.
        aux_log_q: subtract each auxiliary candidate's log Q (its expected count among the
            `aux_negatives` popularity-drawn targets) from its score in L_SA, as the in-batch NTP does;
            False is the paper as we read it (no correction named).
        ranker_negatives: other in-batch targets the ranker scores per example.
        hard_negatives, hard_pool: generator top-`hard_pool` items the ranker scores per example.
        ranker_rows: examples per batch the ranker trains on (a random subset; its 1,000-item
            cross-attention dominated the step: ~4 of 10 s for 512 examples on ML-1M).
        freeze_generator: train the ranker only. init_from: GRank checkpoint whose weights to start from,
            or a GRank training YAML, which `genret benchmark` / `genret train` first train on the same
            data (into DIR/init, genret.training.grank_generator) and then start from.
        k1: candidates per user at serving and in the benchmark. val_k1: at validation (smaller: faster).
        blend: final score = s_ca + blend * g(u, c) (0 = the ranker alone, the paper's), where g is the
            generator's own score (GRank's <h_u, e(c)>, a DualGR beam's log-probability, ...).
        blend_choices: blends tried on the validation users (one scoring of the candidates serves them
            all): each validation logs the best one's list (and val/blend), and `genret benchmark`
            keeps the best by `monitor` after training, serves test with it and writes it into the
            checkpoint. None: use `blend` as given.
        generator: whose top k1 the ranker re-orders at serving and in the benchmark: "grank" (its own
            MIPS) or the checkpoint of a SASRec / KuaiFormer / DualGR model trained on the same data
            (never trained here: frozen), or that model's training YAML, which `genret benchmark` /
            `genret train` first train on the same data (genret.training.grank_generator) and then use
            as that checkpoint. Training is the same either way: the ranker's hard negatives
            come from GRank's own generator unless `hard_negatives_from` is "generator".
        hard_negatives_from: "own" (GRank's own generator's top `hard_pool`, every step) or
            "generator" (the `generator` checkpoint's top `hard_pool` for each training user's last
            cut, computed once before training: the ranker learns to order exactly what that
            generator proposes; it then trains on last-cut examples only). See the module docstring.
            With hard_negatives 0 or ranker_weight 0 there is nothing to cache and both are the same.
        generator_batch_size: histories per call to the external generator when caching its candidates.
        beam_width: beams per level of a DualGR generator (default: what k1 needs).
        scorer: a DualGR checkpoint (or its training YAML, trained first into DIR/scorer like a
            generator YAML) whose teacher-forced log-probability of each of GRank's own candidates
            is blended in at evaluation and serving (final = the ranker's score, or the generator's
            without a ranker, + blend x log P_DualGR(c)); `genret benchmark` chooses the blend on validation.
            Only with generator "grank". Validation during training (the kept epoch) ranks without it.
        lr, weight_decay, warmup_steps, cosine: AdamW and its schedule.
        monitor, patience, eval_ks: epoch selection (val/ndcg@10 is generator + ranker).
    """

    family, config_class, network_class = "grank", GRankConfig, GRank

    def __init__(self, config: GRankConfig | None = None, ntp_weight: float = 1.0, aux_weight: float = 0.5,
                 ranker_weight: float = 1.0, position_loss_weight: float = 1.0, temperature: float = 1.0,
                 ntp_negatives: str = "full", aux_negatives: int = 32, aux_log_q: bool = False,
                 ranker_negatives: int = 32, hard_negatives: int = 32, hard_pool: int = 200, ranker_rows: int = 128,
                 freeze_generator: bool = False,
                 init_from: str | None = None, k1: int = 1000, val_k1: int = 200, blend: float = 0.0,
                 blend_choices: list[float] | None = None,
                 generator: str = "grank", beam_width: int | None = None, hard_negatives_from: str = "own",
                 generator_batch_size: int = 256, scorer: str | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: int = 100, cosine: bool = True,
                 monitor: str = "val/ndcg@10", patience: int | None = None, eval_ks: list[int] | None = None):
        super().__init__()
        if ntp_negatives not in NTP_NEGATIVES:
            raise ValueError(f"model.ntp_negatives must be one of {NTP_NEGATIVES}, got {ntp_negatives!r}")
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {temperature}")
        if min(ntp_weight, aux_weight, ranker_weight, position_loss_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if freeze_generator and init_from is None:
            raise ValueError("freeze_generator needs init_from (a trained GRank checkpoint); a frozen random "
                             "generator produces random candidates")
        if freeze_generator and ranker_weight == 0:
            raise ValueError("freeze_generator trains the ranker only; set ranker_weight > 0")
        if hard_negatives_from not in HARD_NEGATIVE_SOURCES:
            raise ValueError(f"model.hard_negatives_from must be one of {HARD_NEGATIVE_SOURCES}, "
                             f"got {hard_negatives_from!r}")
        if hard_negatives_from == "generator" and generator in (None, "grank"):
            raise ValueError("model.hard_negatives_from: generator draws the ranker's hard negatives from an "
                             "external generator's candidates; set model.generator to its checkpoint (a SASRec / "
                             "KuaiFormer / DualGR model trained on the same data), or use hard_negatives_from: own")
        if blend_choices is not None and (not blend_choices or min(blend_choices) < 0):
            raise ValueError(f"model.blend_choices must be a non-empty list of blends >= 0, got {blend_choices}")
        if scorer not in (None, "none") and generator not in (None, "grank"):
            raise ValueError(f"model.scorer rescores GRank's own candidates, but model.generator is {generator}, "
                             "whose own score the blend already weighs; set model.generator: grank, or drop "
                             "model.scorer")
        if generator_batch_size < 1:
            raise ValueError(f"model.generator_batch_size must be >= 1, got {generator_batch_size}")
        self.config = config or GRankConfig()
        self.ntp_weight, self.aux_weight, self.ranker_weight = ntp_weight, aux_weight, ranker_weight
        self.position_loss_weight = position_loss_weight
        self.temperature = temperature
        self.ntp_negatives = ntp_negatives
        self.aux_negatives, self.ranker_negatives = aux_negatives, ranker_negatives
        self.aux_log_q = aux_log_q
        self.hard_negatives, self.hard_pool, self.ranker_rows = hard_negatives, hard_pool, ranker_rows
        self.freeze_generator, self.init_from = freeze_generator, init_from
        self.k1, self.val_k1, self.blend = k1, val_k1, blend
        self.blend_choices = None if blend_choices is None else [float(b) for b in blend_choices]
        self.generator, self.beam_width = generator, beam_width
        self.hard_negatives_from, self.generator_batch_size = hard_negatives_from, generator_batch_size
        self.scorer = None if scorer in (None, "none") else scorer
        self.lr, self.weight_decay, self.warmup_steps, self.cosine = lr, weight_decay, warmup_steps, cosine
        self.monitor, self.patience = monitor, patience
        self.eval_ks = sorted(set(eval_ks or [10, 50]))
        hp = {k: v for k, v in locals().items() if k not in ("self", "config", "__class__")}
        self.save_hyperparameters({"config": dataclasses.asdict(self.config), **hp})
        self.model: GRank | None = None
        self.catalogue: dict[str, Any] | None = None
        # (n_train_users, hard_pool) dense ids, -1 padded: the external generator's top items for each
        # training user's last cut ("generator" only; a non-persistent buffer that
        # genret.eval.grank_negatives.GeneratorHardNegatives fills when fitting starts).
        self.register_buffer("generator_pool", None, persistent=False)
        # (n_valid, val_k1) dense ids and their scores: the external generator's candidates for the
        # validation users, which validation re-ranks under "generator" (filled with generator_pool).
        self.register_buffer("generator_val_items", None, persistent=False)
        self.register_buffer("generator_val_scores", None, persistent=False)
        self._ranker_examples = 0  # last-cut examples the ranker trained on in the latest step ("generator")

    # ------------------------------------------------------------------ model from data facts
    def build_from_data(self, dm) -> GRank:
        """Resolve the config with the data's facts, create the network (and load `init_from`)."""
        if not hasattr(dm, "long_len"):
            raise ValueError("GRank trains on a GRankDataModule (genret.training.grank_datamodule)")
        self.config = dataclasses.replace(self.config, n_items=dm.n_items, max_len=dm.max_len, long_len=dm.long_len)
        self.model = GRank(self.config)
        self.register_buffer("item_log_prob", torch.from_numpy(dm.item_log_prob))
        self.catalogue = {"dataset": dm.log_all.name, "item_ids": dm.log_all.item_ids.tolist()}
        if self.init_from:
            from genret.training.checkpoint import load_checkpoint, model_state
            from genret.training.grank_generator import is_training_config

            if is_training_config(self.init_from):
                raise RuntimeError(f"model.init_from {self.init_from} is a training config: `genret train` / "
                                   "`genret benchmark` train it first; a hand-built run calls "
                                   "genret.training.grank_generator.train_init(module, datamodule, out_dir) "
                                   "before fitting, or passes a trained GRank checkpoint")

            checkpoint, entry = load_checkpoint(self.init_from, family="grank")
            if entry["config"]["n_items"] != dm.n_items:
                raise ValueError(f"init_from {self.init_from} has {entry['config']['n_items']} items, the data "
                                 f"{dm.n_items}; start from a checkpoint trained on this data")
            # Not a weight, so load_state_dict cannot catch it: the same weights read out elsewhere
            # give another user vector, and the frozen generator's score would silently change.
            trained_readout = entry["config"].get("readout", "user_token")
            if trained_readout != self.config.readout:
                raise ValueError(f"init_from {self.init_from} was trained with config.readout {trained_readout!r}, "
                                 f"this run has {self.config.readout!r}; set model.config.readout: "
                                 f"{trained_readout} (or start from a checkpoint trained with this readout)")
            self.model.load_state_dict(model_state(checkpoint))
        if self.freeze_generator:
            for name, param in self.model.named_parameters():
                param.requires_grad_(name.startswith("ranker."))
        if self.uses_generator_pool:
            dm.example_rows = True  # batches say which cached row each example reads
        return self.model

    @property
    def uses_generator_pool(self) -> bool:
        """Whether the ranker's hard negatives come from the cached external generator's candidates."""
        return self.hard_negatives_from == "generator" and self.ranker_weight > 0 and self.hard_negatives > 0

    def on_fit_start(self) -> None:
        if not self.uses_generator_pool:
            return
        n_users = len(self.trainer.datamodule.train_users)
        if self.generator_pool is None or self.generator_pool.shape != (n_users, self.hard_pool):
            raise RuntimeError("hard_negatives_from: generator needs the external generator's candidates for the "
                               f"{n_users} training users before training; the grank family's callback "
                               "genret.eval.grank_negatives.GeneratorHardNegatives computes them (genret train / "
                               "benchmark add it; a hand-built Trainer must list it)")

    def set_generator_pool(self, pool: torch.Tensor) -> None:
        """Keep the external generator's top `hard_pool` per training user's last cut: (n_train_users,
        hard_pool) int64 dense ids, -1 padded, in `train_users` order; a non-persistent buffer."""
        if pool.dtype != torch.int64 or pool.ndim != 2 or pool.shape[1] != self.hard_pool:
            raise ValueError(f"the generator pool must be (users, hard_pool={self.hard_pool}) int64, got "
                             f"{tuple(pool.shape)} {pool.dtype}")
        self.register_buffer("generator_pool", pool.to(self.device), persistent=False)

    def set_generator_validation(self, items: torch.Tensor, scores: torch.Tensor) -> None:
        """Keep the external generator's candidates for the validation users (EvalSet order): (n_valid,
        K) int64 dense ids, -1 padded, and their scores (-inf there); validation re-ranks them."""
        if items.dtype != torch.int64 or items.ndim != 2 or scores.shape != items.shape:
            raise ValueError(f"validation candidates must be (users, K) int64 with scores of the same shape, got "
                             f"{tuple(items.shape)} {items.dtype} and {tuple(scores.shape)}")
        self.register_buffer("generator_val_items", items.to(self.device), persistent=False)
        self.register_buffer("generator_val_scores", scores.float().to(self.device), persistent=False)

    # ------------------------------------------------------------------ losses
    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted terms of the batch's loss (a dict of scalars; "loss" is their sum)."""
        items, long_items, targets = batch["items"], batch["long"], batch["targets"]
        n = len(targets)
        rng_device = targets.device
        out: dict[str, torch.Tensor] = {}
        aux = None
        if self.aux_weight > 0 and not self.freeze_generator:
            negatives = targets[torch.randint(0, n, (n, self.aux_negatives), device=rng_device)]
            aux = torch.cat([targets[:, None], negatives], dim=1)
        generator_trains = not self.freeze_generator
        with torch.set_grad_enabled(generator_trains and torch.is_grad_enabled()):
            hidden, cand_states = self.model.encode(items, aux)
        users = self.model.readout(hidden)
        table = self.model.item_vectors()
        if generator_trains and self.ntp_weight > 0:
            out["ntp"] = self.ntp_weight * self.ntp_loss(users, targets)
        if generator_trains and self.position_loss_weight > 0:
            following = torch.cat([items[:, 1:], targets[:, None]], dim=1)
            has = items >= 0
            states = self.model.position_states(hidden)[has]
            out["position"] = self.position_loss_weight * self.ntp_loss(states, following[has])
        if aux is not None:
            allowed = aux != targets[:, None]
            allowed[:, 0] = True
            column = torch.zeros(n, dtype=torch.long, device=rng_device)
            out["aux"] = self.aux_weight * self.aux_loss(self.model.aux_scores(cand_states), aux, column, allowed)
        if self.ranker_weight > 0 and self.uses_generator_pool:
            # Only last-cut examples: the cached candidates are those of the user's last cut.
            if "last_cut" not in batch:
                raise RuntimeError("hard_negatives_from: generator needs training batches with user_rows / last_cut "
                                   "(GRankDataModule with example_rows set; build_from_data sets it)")
            rows = batch["last_cut"].nonzero().squeeze(1)
            if len(rows) > self.ranker_rows:
                rows = rows[torch.randperm(len(rows), device=rng_device)[:self.ranker_rows]]
            self._ranker_examples = len(rows)
            if len(rows):
                pool_rows = self.generator_hard_negatives(batch["user_rows"][rows], targets[rows])
                out["ranker"] = self.ranker_weight * self.ranker_loss(
                    users[rows].detach(), table.detach(), items[rows], long_items[rows], targets[rows], pool_rows)
            else:  # nothing to rank against the cached candidates this step
                out["ranker"] = torch.zeros((), device=rng_device)
        elif self.ranker_weight > 0:
            rows = torch.randperm(n, device=rng_device)[:self.ranker_rows] if n > self.ranker_rows else slice(None)
            out["ranker"] = self.ranker_weight * self.ranker_loss(users[rows].detach(), table.detach(), items[rows],
                                                                  long_items[rows], targets[rows])
        out["loss"] = sum(out.values())
        return out

    def ntp_loss(self, users: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """InfoNCE of user vectors (N, d) for targets (N,): full catalogue or in-batch with log Q."""
        table = self.model.item_vectors()
        if self.ntp_negatives == "full":
            return info_nce(users @ table.T, targets, self.temperature)
        candidates, inverse = torch.unique(targets, return_inverse=True)
        logits = users @ table[candidates].T / self.temperature
        logits = logits - sampling_log_q(self.item_log_prob, candidates, len(targets), 0, self.config.n_items)[None]
        return info_nce(logits, inverse, 1.0)

    def aux_loss(self, scores: torch.Tensor, candidates: torch.Tensor, column: torch.Tensor,
                 allowed: torch.Tensor) -> torch.Tensor:
        """L_SA: InfoNCE of the candidate tokens' scores (N, C), the target in `column`."""
        if not self.aux_log_q:
            return info_nce(scores, column, self.temperature, allowed)
        log_q = sampling_log_q(self.item_log_prob, candidates.flatten(), self.aux_negatives, 0, self.config.n_items)
        return info_nce(scores / self.temperature - log_q.view_as(scores), column, 1.0, allowed)

    def generator_hard_negatives(self, user_rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`hard_negatives` items per example drawn uniformly (with replacement) from its cached row
        of `generator_pool` without the target and the padding: (N, hard_negatives) dense ids, -1
        where the row holds nothing else (those columns are masked out of the loss)."""
        if self.generator_pool is None:
            raise RuntimeError("hard_negatives_from: generator needs the cached generator candidates; "
                               "genret.eval.grank_negatives.GeneratorHardNegatives computes them when fitting starts")
        pool = self.generator_pool[user_rows]
        valid = (pool >= 0) & (pool != targets[:, None])
        has = valid.any(dim=1)
        weights = torch.where(has[:, None], valid, torch.ones_like(valid)).float()
        picked = pool.gather(1, torch.multinomial(weights, self.hard_negatives, replacement=True))
        return picked.masked_fill(~has[:, None], -1)

    def ranker_loss(self, users: torch.Tensor, table: torch.Tensor, items: torch.Tensor, long_items: torch.Tensor,
                    targets: torch.Tensor, hard: torch.Tensor | None = None) -> torch.Tensor:
        """InfoNCE of s_ca: the target (column 0), hard negatives from the generator's top items
        (history and target removed; `hard` (N, hard_negatives): drawn already, -1 = none, e.g. by
        `generator_hard_negatives`) and other in-batch targets."""
        n, device = len(targets), targets.device
        columns = [targets[:, None]]
        if hard is not None:
            columns.append(hard)
        elif self.hard_negatives > 0:
            with torch.no_grad():
                scores = users.float() @ table.float().T
                rows = torch.arange(n, device=device)
                scores[rows, targets] = float("-inf")
                seen = items >= 0
                scores[rows[:, None].expand_as(items)[seen], items[seen]] = float("-inf")
                pool = scores.topk(min(self.hard_pool, self.config.n_items - 1), dim=1).indices
                pick = torch.randint(0, pool.shape[1], (n, self.hard_negatives), device=device)
                columns.append(pool.gather(1, pick))
        if self.ranker_negatives > 0:
            columns.append(targets[torch.randint(0, n, (n, self.ranker_negatives), device=device)])
        candidates = torch.cat(columns, dim=1)
        allowed = candidates != targets[:, None]
        allowed[:, 0] = True
        if hard is not None:
            allowed &= candidates >= 0
            candidates = candidates.clamp(min=0)
        scores = self.model.rank_scores(candidates, long_items, users)
        return info_nce(scores, torch.zeros(n, dtype=torch.long, device=device), self.temperature, allowed)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch)
        n = len(batch["targets"])
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=n)
        if self.uses_generator_pool:
            # How many last-cut examples the ranker trained on (0: its term was 0 this step).
            self.log("train/ranker_examples", float(self._ranker_examples), batch_size=n)
        if not terms["loss"].requires_grad:
            return None  # only a ranker term and no last-cut example: nothing to learn this step
        return terms["loss"]

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """Generate (top val_k1, history excluded; under hard_negatives_from: generator the external
        generator's cached candidates) and rank them once per blend of `blend_choices` (or `blend`);
        genret.eval.grank_validation scores the lists and keeps the best blend's."""
        k1 = min(self.val_k1, self.config.n_items)
        if self.generator_val_items is not None:
            candidates = self.generator_val_items[batch["index"]]
            gen = self.generator_val_scores[batch["index"]]
            users = self.model.user_vectors(batch["items"])
            rank = self.model.rank_candidates(candidates, batch["long"], users)
        else:
            candidates, gen, rank = self.model.generate_and_rank(batch["items"], batch["long"], k1, batch["seen"])
        if self.ranker_weight == 0:  # an ablation without the ranker: its list is the generator's
            return {"generator": candidates.cpu(), "ranked": {self.blend: candidates.cpu()}}
        ranked = {}
        for blend in self.blend_choices or [self.blend]:
            order = blended_scores(gen, rank, blend).argsort(dim=1, descending=True, stable=True)
            ranked[blend] = candidates.gather(1, order).cpu()
        return {"generator": candidates.cpu(), "ranked": ranked}

    # ------------------------------------------------------------------ checkpoint contents
    def checkpoint_extra(self) -> dict[str, Any]:
        """How the retriever serves this model: k1, the score blend, the generator, ranker on or off."""
        return {"serving": {"k1": self.k1, "blend": self.blend, "generator": self.generator,
                            "ranker": self.ranker_weight > 0, "beam_width": self.beam_width,
                            "scorer": self.scorer,
                            # provenance (serving does not read it): whose candidates the ranker trained on
                            "hard_negatives_from": self.hard_negatives_from}}


def load_grank(path, device: str | torch.device = "cpu") -> tuple[GRank, dict[str, Any]]:
    """The network of a GRank checkpoint (eval mode) and its checked "genret" entry."""
    from genret.training.checkpoint import load_network

    return load_network(path, "grank", lambda config: GRank(GRankConfig(**config)), device)
