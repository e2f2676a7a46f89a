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
