"""The optimiser and learning-rate schedule every genret model trains with."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  cosine: bool = True, floor: float = 0.1) -> dict:
    """Linear warm-up, then cosine decay to `floor` x the peak (or constant with cosine=False).

    Warm-up is capped at a tenth of the run so short runs still reach the peak rate.
    Returns Lightning's scheduler config (stepped every optimiser step).
    """
    total = max(int(total_steps), 1)
    warmup = min(warmup_steps, max(total // 10, 1)) if warmup_steps else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)):
    """AdamW with weight decay on the weight matrices only: biases, norms and embedding tables are
    left undecayed (decaying an embedding row pulls rarely seen items towards zero)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "norm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)


def adamw_warmup_cosine(module, betas: tuple[float, float] = (0.9, 0.98)) -> dict:
    """`configure_optimizers` of a module with lr / weight_decay / warmup_steps / cosine attributes:
    AdamW (`adamw`) on module.model and the warm-up + cosine schedule over the trainer's steps."""
    opt = adamw(module.model, module.lr, module.weight_decay, betas=betas)
    return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, module.warmup_steps,
                                                             module.trainer.estimated_stepping_batches,
                                                             cosine=module.cosine)}
