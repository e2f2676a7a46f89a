"""Two opt-in settings for the lite search: encoder LayerScale and linear lr warm-up.
Both default off, and off they leave the model and the schedule exactly as before."""

import torch

from updetr_lite.config import ConfigError, get_config
from updetr_lite.engine.step import warm_up
from updetr_lite.models.build import build_transformer
from updetr_lite.models.transformer import EncoderLayer


def test_layer_scale_off_adds_no_parameter():
    cfg = get_config("smoke", ["model.enc_layer_scale=0.0"])
    assert cfg.model.enc_layer_scale == 0.0 and cfg.finetune.warmup_steps == 0
    assert get_config("paper").model.enc_layer_scale == 0.0  # the paper's transformer
    keys = set(build_transformer(cfg).state_dict())
    assert not any("gamma" in k for k in keys)
    on = set(build_transformer(get_config("smoke", ["model.enc_layer_scale=0.1"])).state_dict())
    assert on - keys == {"encoder.layers.0.gamma1", "encoder.layers.0.gamma2"}


def test_layer_scale_scales_each_residual_branch():
    torch.manual_seed(0)
    d = 16
    plain = EncoderLayer(d, 2, 32, 0.0, normalize_before=True)
    scaled = EncoderLayer(d, 2, 32, 0.0, normalize_before=True, layer_scale=0.25)
    scaled.load_state_dict(plain.state_dict(), strict=False)
    src, pos = torch.randn(2, 5, d), torch.randn(2, 5, d)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    # by hand: pre-norm block with both branches x 0.25
    x = scaled.norm1(src)
    a = scaled.self_attn(x + pos, x + pos, x, key_padding_mask=mask, need_weights=False)[0]
    mid = src + 0.25 * a
    want = mid + 0.25 * scaled.linear2(torch.relu(scaled.linear1(scaled.norm2(mid))))
    torch.testing.assert_close(scaled.eval()(src, mask, pos), want)
    assert not torch.allclose(plain.eval()(src, mask, pos), want)


def test_warm_up_ramps_then_follows_step_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    seen = []
    for step in range(4):
        warm_up(opt, sched, step, 4)
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
    torch.testing.assert_close(torch.tensor(seen), torch.tensor([2.5e-4, 5e-4, 7.5e-4, 1e-3]))
    sched.step()
    sched.step()  # one drop: epoch 2
    warm_up(opt, sched, 4, 4)
    torch.testing.assert_close(torch.tensor(opt.param_groups[0]["lr"]), torch.tensor(1e-4))


def test_bad_values_are_named():
    for bad, name in (
        ("model.enc_layer_scale=-1", "enc_layer_scale"),
        ("pretrain.warmup_steps=-2", "warmup_steps"),
    ):
        try:
            get_config("smoke", [bad])
        except ConfigError as e:
            assert name in str(e)
        else:
            raise AssertionError(bad)
