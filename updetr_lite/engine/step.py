"""One training step, the same for the engine, the bench and the demo checkpoint trainer.

``train_step(forward, targets, criterion, optimizer, params, clip_max_norm)``: the model's
forward (bf16 autocast when ``amp``), the criterion (weighted loss terms, ``loss``,
``class_error``), the NaN guard (predictions, loss terms, gradient norm), backward, gradient
clipping and the optimizer step. It returns the loss terms as floats, averaged over processes.

``StepModel`` and ``compute_losses`` are what the engine runs inside it: the batch dicts of
the training data (images or cached CNN maps, query patches or their features) moved to the
device and fed to UP-DETR or DETR; ````build_optimizer`` what it steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..models.matcher import NonFiniteOutputError
from . import distributed as du


class NonFiniteLossError(RuntimeError):
    """A loss term, the predictions, the gradient norm or the weights became NaN or infinite;
    no checkpoint of that state was written."""


def build_optimizer(model: nn.Module, tc):
    """AdamW over the trained parameters (the CNN at ``lr_backbone``), the lr divided by 10
    every ``lr_drop`` epochs."""
    main, cnn = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (cnn if name.startswith("backbone.") else main).append(p)
    groups = [{"params": main, "lr": tc.lr, "name": "transformer"}]
    if cnn:
        groups.append({"params": cnn, "lr": tc.lr_backbone, "name": "backbone"})
    # fused: one vectorised pass over each parameter (CPU and CUDA); 3x faster than the loop
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=tc.lr_drop, gamma=0.1)


def warm_up(optimizer, scheduler, step: int, warmup_steps: int) -> None:
    """Linear warm-up (``TrainConfig.warmup_steps``): optimizer step ``step`` (0-based) runs
    at min(1, (step + 1) / warmup_steps) of the StepLR schedule's lr for its epoch."""
    if warmup_steps <= 0 or step > warmup_steps:
        return
    factor = min(1.0, (step + 1) / warmup_steps)
    drops = scheduler.last_epoch // scheduler.step_size
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * scheduler.gamma**drops * factor


class StepModel(nn.Module):
    """What DDP wraps: one forward of the model on one batch.

    ``forward(inputs, mask, patches=None, patch_boxes=None)``: inputs are images [B, 3, H, W]
    or, with cached features, CNN maps [B, C, h, w]; ``patches`` are crops [B, M, 3, p, p]
    or (cached 'crop' mode) patch features [B, M, C]; ``patch_boxes`` [B, M, 4] cxcywh in
    [0, 1] (pre-training only).
    """

    def __init__(self, model: nn.Module, pretext: bool, cached: bool):
        super().__init__()
        self.model, self.pretext, self.cached = model, pretext, cached

    def forward(self, inputs, mask, patches=None, patch_boxes=None):
        if not self.pretext:
            if self.cached:
                return self.model.forward_features(inputs, mask)
            return self.model(inputs, mask)
        if self.cached:
            return self.model.forward_features(inputs, mask, patches, patch_boxes)
        return self.model(inputs, mask, patches, patch_boxes)


def batch_to_device(batch: dict, device: torch.device) -> tuple[tuple, list[dict]]:
    """A batch dict (inputs, mask, targets[, patches, patch_params]) -> (the StepModel's
    arguments (inputs, mask, patches, patch_boxes) on ``device``, the targets there).
    With ``pretext.patch_pipeline`` 'device' the query patches are cut here."""
    inputs = batch["inputs"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    targets = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in batch["targets"]
    ]
    patches = batch.get("patches")
    patches = patches.to(device) if patches is not None else None
    if batch.get("patch_params") is not None:
        inputs, patches = batch["patch_maker"](inputs, mask, targets, batch["patch_params"])
    boxes = torch.stack([t["boxes"] for t in targets]) if batch.get("pretext") else None
    return (inputs, mask, patches, boxes), targets


def forward_losses(forward: Callable, targets, criterion, device, amp: bool) -> dict:
    """``forward()`` under bf16 autocast when ``amp``, then the criterion (it casts to fp32
    itself): the loss dict of SetCriterion (weighted terms, ``loss``, ``class_error``)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        outputs = forward()
    return criterion(outputs, targets)


def compute_losses(step_model, criterion, batch, device, amp: bool) -> dict[str, torch.Tensor]:
    """Forward + criterion on one batch dict of the training data (no backward)."""
    args, targets = batch_to_device(batch, device)
    return forward_losses(lambda: step_model(*args), targets, criterion, device, amp)


def train_step(
    forward: Callable,
    targets: list[dict],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    clip_max_norm: float,
    device: torch.device,
    amp: bool = False,
    where: str = "step",
    stopped: str = "",
    on_losses: Callable | None = None,
) -> dict[str, float]:
    """One optimizer step -> the criterion's terms as floats (averaged over processes).

    ``forward()`` returns the model's outputs for ``targets`` (one dict per image: boxes
    cxcywh in [0, 1], labels); ``params`` are the trained parameters (their gradient is
    clipped to ``clip_max_norm`` when > 0). NaN or inf in the predictions, a loss term or
    the gradient norm raises NonFiniteLossError naming ``where`` before the optimizer
    steps, with ``stopped`` (what the caller has left) appended. ``on_losses()`` runs right
    after the criterion (the bench times the forward with it).
    """
    try:
        losses = forward_losses(forward, targets, criterion, device, amp)
    except NonFiniteOutputError as e:  # raised by the matcher, before any loss exists
        raise NonFiniteLossError(f"{where}: {e}; {stopped}") from e
    if on_losses is not None:
        on_losses()
    flat = torch.stack([v.detach().float() for v in losses.values()]).tolist()  # one sync
    values = du.reduce_mean(dict(zip(losses, flat)), device)
    check_finite(values, where, stopped)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if clip_max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_max_norm)
        if not torch.isfinite(norm):
            raise NonFiniteLossError(f"{where}: gradient norm is {norm.item()}; {stopped}")
    optimizer.step()
    return values


def check_finite(values: dict[str, float], where: str, stopped: str) -> None:
    """NonFiniteLossError naming the first non-finite loss term (``loss`` itself last)."""
    bad = [k for k, v in values.items() if not math.isfinite(v) and k != "loss"]
    if not bad and not math.isfinite(values["loss"]):
        bad = ["loss"]
    if bad:
        raise NonFiniteLossError(
            f"{where}: loss term {bad[0]} is {values[bad[0]]}"
            f"{' (also ' + ', '.join(bad[1:]) + ')' if len(bad) > 1 else ''}; {stopped}"
        )


def non_finite(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    floats = [(k, v) for k, v in state.items() if v.is_floating_point()]
    if not floats:
        return []
    ok = torch.stack([torch.isfinite(v).all() for _, v in floats]).tolist()  # one sync
    return [k for (k, _), good in zip(floats, ok) if not good]
