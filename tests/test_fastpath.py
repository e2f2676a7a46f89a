"""The frozen-CNN fast path equals the plain fp32 CNN: exactly in fp32, within bf16's precision in bf16."""

import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from updetr_lite.fastpath import FrozenCNN, fold_batch_norms


def _random_frozen_resnet18() -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    # Random BN statistics so that folding has something to fold.
    for m in net.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return nn.Sequential(*list(net.children())[:-3]).eval()  # up to layer3


def test_folding_removes_every_batch_norm_and_keeps_outputs():
    cnn = _random_frozen_resnet18()
    n_bn = sum(isinstance(m, FrozenBatchNorm2d) for m in cnn.modules())
    assert n_bn == 15  # stem 1 + layer1 4 + layer2 4+1 + layer3 4+1
    folded = fold_batch_norms(cnn)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) == n_bn
    assert (
        sum(isinstance(m, FrozenBatchNorm2d) for m in cnn.modules()) == n_bn
    )  # original untouched
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref, out = cnn(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_frozen_cnn_fp32_and_bf16_match_plain_path():
    cnn = _random_frozen_resnet18()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = cnn(x)
    fast32 = FrozenCNN(cnn, bf16=False)
    out32 = fast32(x)
    assert not out32.requires_grad and out32.dtype == torch.float32
    torch.testing.assert_close(out32, ref, rtol=1e-4, atol=1e-4)
    out16 = FrozenCNN(cnn, bf16=True)(x)
    # bf16 keeps 8 bits of mantissa: the stated tolerance is 5% of the feature scale.
    rel = (out16 - ref).norm() / ref.norm()
    assert rel < 0.05, rel
    assert out16.dtype == torch.float32


def test_fast_path_stays_in_eval_mode():
    fast = FrozenCNN(_random_frozen_resnet18(), bf16=False)
    fast.train()
    assert not fast.training and not fast.cnn.training


def _pretext_losses(fast: bool) -> dict[str, float]:
    from updetr_lite.config import get_config
    from updetr_lite.models import build_criterion, build_updetr

    cfg = get_config("smoke", [f"model.fast_cnn={fast}", "pretext.patch_feature='crop'"])
    torch.manual_seed(0)
    model = build_updetr(cfg).eval()
    assert model.backbone[0].fast == fast
    # Random BN statistics, as after a real pre-training, so that folding matters.
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_(0, 0.1)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=g)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    patches = torch.randn(2, cfg.pretext.num_patches, 3, 32, 32, generator=g)
    boxes = torch.rand(2, cfg.pretext.num_patches, 4, generator=g) * 0.5 + 0.25
    targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in boxes]
    out = model(images, mask, patches=patches, patch_boxes=boxes)
    losses = build_criterion(cfg, pretext=True)(out, targets)
    return {k: float(v.detach()) for k, v in losses.items() if k.startswith("loss")}


def test_fast_path_gives_the_same_pretext_losses():
    """The switch (model.fast_cnn) changes speed, not the losses: within 2% per term (bf16)."""
    slow, fast = _pretext_losses(False), _pretext_losses(True)
    assert slow.keys() == fast.keys() and "loss_rec" in slow
    for k in slow:
        assert abs(fast[k] - slow[k]) <= 0.02 * abs(slow[k]) + 1e-3, (k, slow[k], fast[k])


def test_fast_path_is_rebuilt_after_a_weight_load():
    from updetr_lite.models.backbone import Backbone

    bb = Backbone("resnet18", "layer3", frozen_cnn=True, fast=True)
    x = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    before = bb(x, mask)[0]
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in bb.body.state_dict().items()
    }
    state = {k: (v.abs() + 0.5 if "running_var" in k else v) for k, v in state.items()}
    bb.body.load_state_dict(state)
    after = bb(x, mask)[0]
    plain = Backbone("resnet18", "layer3", frozen_cnn=True, fast=False)
    plain.body.load_state_dict(state)
    ref = plain(x, mask)[0]
    assert not torch.allclose(before, after)
    assert ((after - ref).norm() / ref.norm()) < 0.05


def test_a_cnn_that_trains_runs_its_fixed_stages_on_the_fast_path():
    """CNN trains from layer2 (DETR): the stem and layer1 never train, so they run folded,
    without autograd; layer2/3 keep their gradients, within bf16 precision of the plain path."""
    from updetr_lite.models.backbone import Backbone

    torch.manual_seed(0)
    fast = Backbone("resnet18", "layer3", frozen_cnn=False, fast=True)
    plain = Backbone("resnet18", "layer3", frozen_cnn=False, fast=False)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    out = {}
    for name, bb in (("fast", fast), ("plain", plain)):
        feat = bb(x, mask)[0]
        feat.square().mean().backward()
        grads = {n: p.grad for n, p in bb.body.named_parameters() if p.grad is not None}
        out[name] = feat.detach(), grads
    (f_fast, g_fast), (f_plain, g_plain) = out["fast"], out["plain"]
    assert set(g_fast) == set(g_plain) and g_plain  # the same weights train
    assert all(n.startswith(("layer2", "layer3")) for n in g_fast)
    fixed = fast._fast_cnn[torch.device("cpu")].cnn
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fixed.modules())
    assert not any(n.startswith(("layer2", "layer3")) for n, _ in fixed.named_children())
    assert (f_fast - f_plain).norm() / f_plain.norm() < 0.05
    for n in g_plain:
        rel = (g_fast[n] - g_plain[n]).norm() / g_plain[n].norm()
        assert rel < 0.1, (n, rel)
