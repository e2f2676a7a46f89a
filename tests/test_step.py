"""engine.step.train_step: the one optimizer step of the engine, the bench and the demo."""

import copy

import pytest
import torch
from torch import nn

from updetr_lite.engine.step import NonFiniteLossError, train_step

CPU = torch.device("cpu")


class SquaredError(nn.Module):
    """A criterion with SetCriterion's output: weighted terms, ``loss``, ``class_error``."""

    def forward(self, outputs, targets):
        y = torch.stack([t["y"] for t in targets])
        term = ((outputs - y) ** 2).mean()
        reg = 0.1 * outputs.abs().mean()
        return {
            "loss_l2": term,
            "loss_reg": reg,
            "class_error": torch.tensor(50.0),
            "loss": term + reg,
        }


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    targets = [{"y": torch.randn(2)} for _ in range(5)]
    return model, x, targets


def test_train_step_is_forward_criterion_backward_clip_step():
    model, x, targets = _setup()
    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt_twin = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    criterion = SquaredError()
    seen = []
    for _ in range(3):
        values = train_step(
            lambda: model(x),
            targets,
            criterion,
            opt,
            list(model.parameters()),
            0.05,  # small: the clip acts
            CPU,
            on_losses=lambda: seen.append(1),
        )
        # the same step written out by hand
        losses = criterion(twin(x), targets)
        opt_twin.zero_grad(set_to_none=True)
        losses["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.05)
        assert norm > 0.05
        opt_twin.step()
        assert values == {k: v.item() for k, v in losses.items()}
    assert len(seen) == 3
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_non_finite_loss_stops_before_backward():
    model, x, targets = _setup()
    before = [p.detach().clone() for p in model.parameters()]

    def forward():
        return model(x) * float("nan")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(NonFiniteLossError, match=r"^step 7: loss term loss_l2 is nan .*; gone"):
        train_step(
            forward, targets, SquaredError(), opt, [], 0.0, CPU, where="step 7", stopped="gone"
        )
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_non_finite_gradient_norm_stops_before_the_optimizer_steps():
    model, x, targets = _setup()
    before = [p.detach().clone() for p in model.parameters()]

    def forward():  # sqrt at 0: a finite loss whose gradient is infinite
        return model(x) + torch.sqrt(model[0].weight[0, 0] * 0.0)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    params = list(model.parameters())
    with pytest.raises(NonFiniteLossError, match=r"^demo step 2: gradient norm is (inf|nan)"):
        train_step(forward, targets, SquaredError(), opt, params, 1.0, CPU, where="demo step 2")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
