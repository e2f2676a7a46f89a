"""Probe (issue 13): how alike are the object queries of a detector when fine-tuning starts?

For each pretext checkpoint, the DETR that fine-tuning starts from (``init_detr_from_pretext``;
no query patch is added to its object queries any more), and for ``scratch:SEED`` the
detector that scratch fine-tuning starts from, on the first val images of the lite data:
- ``query_cos``: mean cosine similarity between the N object queries' outputs of the last
  decoder layer (off-diagonal pairs; 1 means every query says the same);
- ``box_spread``: std over the N queries of the predicted box centres (normalised image
  units), mean over images and x/y.

    python reproduce/probes/query_collapse.py runs/main/pre_crop_s0/last.pth ... scratch:0
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from updetr_lite.config import get_config  # noqa: E402
from updetr_lite.data.embedded import build_embedded  # noqa: E402
from updetr_lite.engine.checkpoint import load_checkpoint, model_state  # noqa: E402
from updetr_lite.engine.inference import eval_input, load_image  # noqa: E402
from updetr_lite.engine.seeding import seed_everything  # noqa: E402
from updetr_lite.engine.train import prepare_model  # noqa: E402
from updetr_lite.models import init_detr_from_pretext  # noqa: E402


def start_detector(what: str, cfg):
    """The detector fine-tuning starts from: ``scratch:SEED`` or a pretext checkpoint path
    (fine-tuning seed 0 for the fresh class head, which these numbers do not use)."""
    seed = int(what.split(":")[1]) if what.startswith("scratch:") else 0
    seed_everything(seed)
    model = prepare_model(cfg, "finetune")[0]
    if not what.startswith("scratch:"):
        init_detr_from_pretext(model, model_state(load_checkpoint(what)))
    return model.eval()


@torch.no_grad()
def query_stats(model, cfg, files) -> dict:
    out = {}
    hook = model.transformer.register_forward_hook(lambda m, i, o: out.update(hs=o[0]))
    cos, spread = [], []
    for f in files:
        x, mask = eval_input(load_image(f), cfg.data.test_size, cfg.data.max_size)
        boxes = model(x, mask)["pred_boxes"][0]  # [N, 4] cxcywh
        hs = out["hs"][-1].reshape(-1, out["hs"].shape[-1])  # [N, d] last decoder layer
        z = torch.nn.functional.normalize(hs.float(), dim=-1)
        sim = z @ z.T
        n = sim.shape[0]
        cos.append(((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))).item())
        spread.append(boxes[:, :2].std(dim=0).mean().item())
    hook.remove()
    return {
        "query_cos": round(sum(cos) / len(cos), 3),
        "box_spread": round(sum(spread) / len(spread), 3),
    }


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    cfg = get_config("lite", ["data.num_workers=0"])
    files = sorted(Path(build_embedded(cfg.data).val_images).iterdir())[:16]
    for what in argv:
        print(what, query_stats(start_detector(what, cfg), cfg, files), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
