"""The frozen-CNN fast path equals the plain fp32 CNN: exactly in fp32, within bf16's precision in bf16."""

import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from updetr_lite.fastpath import FastBackbone, FrozenCNN, enable, fold_batch_norms


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

    cfg = get_config("smoke", [f"model.fast_path={fast}", "pretext.patch_feature='crop'"])
    torch.manual_seed(0)
    model = build_updetr(cfg).eval()
    assert isinstance(model.backbone[0], FastBackbone) == fast
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
    """The switch (model.fast_path) changes speed, not the losses: within 2% per term (bf16)."""
    slow, fast = _pretext_losses(False), _pretext_losses(True)
    assert slow.keys() == fast.keys() and "loss_rec" in slow
    for k in slow:
        assert abs(fast[k] - slow[k]) <= 0.02 * abs(slow[k]) + 1e-3, (k, slow[k], fast[k])


def test_fast_path_is_rebuilt_after_a_weight_load():
    from updetr_lite.models.backbone import Backbone

    bb = enable(Backbone("resnet18", "layer3", frozen_cnn=True))
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
    plain = Backbone("resnet18", "layer3", frozen_cnn=True)
    plain.body.load_state_dict(state)
    ref = plain(x, mask)[0]
    assert not torch.allclose(before, after)
    assert ((after - ref).norm() / ref.norm()) < 0.05


def test_a_cnn_that_trains_runs_its_fixed_stages_on_the_fast_path():
    """CNN trains from layer2 (DETR): the stem and layer1 never train, so they run folded,
    without autograd; layer2/3 keep their gradients, within bf16 precision of the plain path."""
    from updetr_lite.models.backbone import Backbone

    torch.manual_seed(0)
    fast = enable(Backbone("resnet18", "layer3", frozen_cnn=False))
    plain = Backbone("resnet18", "layer3", frozen_cnn=False)
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
    fixed = fast._runners[torch.device("cpu")].cnn
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fixed.modules())
    assert not any(n.startswith(("layer2", "layer3")) for n, _ in fixed.named_children())
    assert (f_fast - f_plain).norm() / f_plain.norm() < 0.05
    for n in g_plain:
        rel = (g_fast[n] - g_plain[n]).norm() / g_plain[n].norm()
        assert rel < 0.1, (n, rel)


def test_fast_dropout_drops_the_stated_share_and_keeps_the_mean():
    from updetr_lite.fastpath import dropout

    torch.manual_seed(0)
    x = torch.ones(1_000_003)  # not a multiple of 4: the last word is cut
    y = dropout(x, 0.1)
    dropped = (y == 0).double().mean().item()
    # binomial standard deviation at n = 1e6: 0.0003; the stated p is round(0.1 * 65536) / 65536
    assert abs(dropped - 6554 / 65536) < 0.0015, dropped
    assert abs(y.double().mean().item() - 1.0) < 0.005
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 65536 / (65536 - 6554)))
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1), y)  # torch.manual_seed reproduces the masks
    assert torch.equal(dropout(x, 0.1, training=False), x)
    # independent bits: neighbouring elements (same 64-bit word) are not correlated
    a, b = (y[:-3:4] == 0).double(), (y[1:-2:4] == 0).double()
    assert abs((a * b).mean().item() - a.mean().item() * b.mean().item()) < 0.002
    g = torch.ones(10, requires_grad=True)
    out = dropout(g, 0.5)
    out.sum().backward()
    assert torch.equal(g.grad, out.detach())  # gradient = the mask times the scale


def test_fast_dropout_is_bitwise_the_mask_then_the_scale():
    """The dropout's output and gradient are, bit for bit (signed zeros included), those of
    the defining formula x * keep * scale, with keep rebuilt here from the same random words;
    in fp32 and in bf16 (where a bf16 mask holding the scale would round the scale)."""
    from updetr_lite.fastpath import dropout

    negative_zeros = 0
    f32, bf16 = torch.float32, torch.bfloat16
    for shape, dtype in [((7, 13), f32), ((32, 64, 129), f32), ((5,), f32), ((9, 40), bf16)]:
        x = torch.randn(shape, dtype=dtype, requires_grad=True)
        g = torch.randn(shape, dtype=dtype)
        torch.manual_seed(3)
        y = dropout(x, 0.1)
        y.backward(g)
        torch.manual_seed(3)
        n, drop = x.numel(), round(0.1 * 65536)
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        keep = (words.view(torch.int16)[:n] >= drop - 32768).view(shape)
        ref_x = x.detach().clone().requires_grad_()
        ref = ref_x.mul(keep).mul_(65536 / (65536 - drop))
        ref.backward(g)
        bits = torch.int32 if x.dtype == torch.float32 else torch.int16
        assert torch.equal(y.detach().view(bits), ref.detach().view(bits))
        assert torch.equal(x.grad.view(bits), ref_x.grad.view(bits))
        negative_zeros += int(torch.signbit(y[y == 0]).sum())
    assert negative_zeros > 0  # signed zeros were compared


def test_written_out_attention_equals_multihead_attention():
    """Without dropout (p = 0 stand-in: same weights, dropout off) the fast attention gives
    nn.MultiheadAttention's output; with masks, padding and UP-DETR's group mask."""
    from updetr_lite.fastpath import MultiheadAttention

    torch.manual_seed(0)
    mha = MultiheadAttention(32, 4, dropout=0.1, batch_first=True)

    def attention(mha, q, k, v, pad, mask):
        return mha(q, k, v, key_padding_mask=pad, attn_mask=mask, need_weights=False)[0]

    q, k, v = torch.randn(2, 6, 32), torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    group = torch.full((6, 9), float("-inf")).triu(1)  # additive, every row keeps a key
    mha.eval()
    pad_add = torch.zeros(2, 9).masked_fill(pad, float("-inf"))
    ref = mha(q, k, v, key_padding_mask=pad_add, attn_mask=group, need_weights=False)[0]
    mha.train()
    mha.dropout = 1e-9  # training path, and a mask that drops nothing
    out = attention(mha, q, k, v, pad, group)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out_bool = attention(mha, q, k, v, pad, group.isinf())
    torch.testing.assert_close(out_bool, ref, rtol=1e-5, atol=1e-5)
    mha.dropout = 0.5  # real dropout: some attention weights dropped, output changes
    assert not torch.allclose(attention(mha, q, k, v, pad, group), ref)


def _smoke_updetr(fast: bool, seed: int):
    from updetr_lite.config import get_config
    from updetr_lite.models import build_updetr

    cfg = get_config(
        "smoke", [f"model.fast_path={fast}", "model.dropout=0.1", "pretext.patch_feature=roi"]
    )
    torch.manual_seed(seed)
    return build_updetr(cfg)


def test_cnn_bf16_setting_decides_the_frozen_cnns_precision():
    """model.cnn_bf16=False: the fast path's CNN maps are fp32 (equal to the plain model's up
    to summation order) whatever the CPU has; True: bf16 (relative error of bf16 size)."""
    from updetr_lite.config import get_config
    from updetr_lite.models import build_detr

    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    maps = {}
    for name, ov in {
        "plain": ["model.fast_path=False"],
        "fp32": ["model.fast_path=True", "model.cnn_bf16=False"],
        "bf16": ["model.fast_path=True", "model.cnn_bf16=True"],
    }.items():
        torch.manual_seed(0)
        detr = build_detr(get_config("smoke", ov)).eval()
        with torch.no_grad():
            maps[name] = detr.backbone(images, mask)[0]
    rel = {k: float((maps[k] - maps["plain"]).norm() / maps["plain"].norm()) for k in maps}
    assert rel["fp32"] < 1e-5 and 1e-4 < rel["bf16"] < 5e-2, rel


def test_enable_swaps_modules_in_place_and_keeps_every_tensor():
    """models/ builds plain torch modules; enable swaps in the fast ones, the same parameter
    objects under the same state-dict keys, and a second enable changes nothing."""
    from updetr_lite import fastpath
    from updetr_lite.models import Backbone

    plain, fast = _smoke_updetr(False, 0), _smoke_updetr(True, 0)
    names = {type(m).__name__: type(m).__module__ for m in plain.modules()}
    assert not any(mod.startswith("updetr_lite.fastpath") for mod in names.values()), names
    n_drop = sum(type(m) is nn.Dropout for m in plain.modules())
    n_mha = sum(type(m) is nn.MultiheadAttention for m in plain.modules())
    # per encoder layer 3 dropouts and 1 attention, per decoder layer 4 and 2
    from updetr_lite.config import get_config

    smoke = get_config("smoke").model
    assert n_drop == 3 * smoke.enc_layers + 4 * smoke.dec_layers
    assert n_mha == smoke.enc_layers + 2 * smoke.dec_layers
    assert sum(type(m) is fastpath.Dropout for m in fast.modules()) == n_drop
    assert sum(type(m) is fastpath.MultiheadAttention for m in fast.modules()) == n_mha
    assert not any(type(m) in (nn.Dropout, nn.MultiheadAttention) for m in fast.modules())
    assert type(fast.backbone[0]) is fastpath.FastBackbone
    sd_plain, sd_fast = plain.state_dict(), fast.state_dict()
    assert list(sd_plain) == list(sd_fast)
    assert all(torch.equal(sd_plain[k], sd_fast[k]) for k in sd_plain)

    again = _smoke_updetr(False, 0)
    params = list(again.parameters())
    assert fastpath.enable(again) is again and list(again.parameters()) == params
    types = [type(m) for m in again.modules()]
    fastpath.enable(again)
    assert [type(m) for m in again.modules()] == types
    assert type(fastpath.enable(Backbone("resnet18", "layer3"))) is fastpath.FastBackbone


def test_checkpoints_load_both_ways_between_fast_and_plain_models():
    """A plain model's state dict loads strictly into a fast one that has already run (its
    folded CNN is then rebuilt from the new weights), and back, bit for bit."""
    fast, plain = _smoke_updetr(True, 0).eval(), _smoke_updetr(False, 1).eval()
    for m in (fast, plain):  # BN statistics that folding must carry
        for bn in m.modules():
            if isinstance(bn, FrozenBatchNorm2d):
                bn.running_var.uniform_(0.5, 2.0)
                bn.running_mean.normal_(0, 0.1)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 64, 64, generator=g)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    boxes = torch.rand(2, 2, 4, generator=g) * 0.5 + 0.25
    with torch.no_grad():
        before = fast(images, mask, patch_boxes=boxes)["pred_boxes"]
        ref = plain(images, mask, patch_boxes=boxes)["pred_boxes"]
        fast.load_state_dict(plain.state_dict())
        after = fast(images, mask, patch_boxes=boxes)["pred_boxes"]
    assert (before - ref).abs().max() > 1e-2  # different weights, different boxes
    assert (after - ref).norm() / ref.norm() < 0.02  # the plain weights, within bf16
    back = _smoke_updetr(False, 2)
    back.load_state_dict(fast.state_dict())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in back.state_dict().items())
