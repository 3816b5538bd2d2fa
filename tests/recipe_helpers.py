"""Helpers shared by the recipe tests (test_recipe.py, test_original_recipe.py, test_core_facts.py)."""
import torch
from torch import nn

from lib.recipe import make_optimizer, make_scheduler


class FixedLogits(nn.Module):
    """A model that always answers ``logits`` (with one parameter, so an optimizer can be built for it)."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.w = logits, nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits + 0 * self.w


def learning_rates(cfg, steps_per_epoch: int, model: nn.Module | None = None) -> list[float]:
    """The lr of every step of ``cfg``'s schedule, as training sees it (read before each step)."""
    opt = make_optimizer(cfg, model if model is not None else nn.Linear(2, 2))
    sched = make_scheduler(cfg, opt, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs
