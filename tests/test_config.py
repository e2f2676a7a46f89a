"""The lite preset against the paper preset: every difference is either scale or named."""

import dataclasses

from updetr_lite.presets import LITE_DEVIATIONS, LITE_SCALE, lite, paper


def _fields(cfg) -> dict:
    out = {}
    for section, values in dataclasses.asdict(cfg).items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
    return out


def test_every_lite_difference_from_the_paper_is_scale_or_a_named_deviation():
    p, q = _fields(paper()), _fields(lite())
    differs = {k for k in p if p[k] != q[k]}
    unnamed = differs - LITE_SCALE - set(LITE_DEVIATIONS)
    assert not unnamed, f"lite differs from paper in unnamed settings: {sorted(unnamed)}"
    stale = (LITE_SCALE | set(LITE_DEVIATIONS)) - differs
    assert not stale, f"named as lite differences but equal to the paper's: {sorted(stale)}"
    assert not LITE_SCALE & set(LITE_DEVIATIONS)
    assert all(len(why) > 40 for why in LITE_DEVIATIONS.values())


def test_lite_runs_the_papers_transformer_and_patch_feature():
    m, pt = lite().model, lite().pretext
    assert m.enc_layers >= 2 and m.pre_norm and not m.pos_in_values
    assert pt.patch_feature == "crop" and pt.crop_bank > 0
    assert m.cnn_bf16 is False  # the same numbers with and without AVX-512 BF16
