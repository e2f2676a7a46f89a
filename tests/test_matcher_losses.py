"""Hungarian matcher against brute force; every loss term against a formula in this file."""

import itertools
import math

import pytest
import torch

from updetr_lite.config import get_config
from updetr_lite.models import HungarianMatcher, SetCriterion, build_criterion
from updetr_lite.models.matcher import cost_terms

torch.set_num_threads(1)


def giou_pair(a, b):
    """GIoU of two cxcywh boxes, written out."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def pair_cost(logits, box, label, tbox, wc=1.0, wb=5.0, wg=2.0):
    prob = torch.softmax(logits, -1)[label].item()
    l1 = sum(abs(box[i].item() - tbox[i].item()) for i in range(4))
    g = giou_pair([v.item() for v in box], [v.item() for v in tbox])
    return -wc * prob + wb * l1 - wg * g


def brute_force(logits, boxes, labels, tboxes, weights=(1.0, 5.0, 2.0)):
    """Minimum total cost over every injective map targets -> predictions."""
    n, t = len(boxes), len(tboxes)
    cost = [
        [pair_cost(logits[i], boxes[i], labels[j], tboxes[j], *weights) for j in range(t)]
        for i in range(n)
    ]
    best = math.inf
    for preds in itertools.permutations(range(n), t):
        best = min(best, sum(cost[p][j] for j, p in enumerate(preds)))
    return best, cost


def random_problem(g, b, n, k, sizes):
    logits = torch.randn(b, n, k + 1, generator=g)
    boxes = torch.cat(
        (
            torch.rand(b, n, 2, generator=g) * 0.6 + 0.2,
            torch.rand(b, n, 2, generator=g) * 0.3 + 0.05,
        ),
        -1,
    )
    targets = []
    for s in sizes:
        tb = torch.cat(
            (torch.rand(s, 2, generator=g) * 0.6 + 0.2, torch.rand(s, 2, generator=g) * 0.3 + 0.05),
            -1,
        )
        targets.append({"boxes": tb, "labels": torch.randint(0, k, (s,), generator=g)})
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def test_matcher_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher(1.0, 5.0, 2.0)
    for trial in range(6):
        sizes = [1 + trial % 4, 3, 0]
        outputs, targets = random_problem(g, 3, 6, 4, sizes)
        indices = matcher(outputs, targets)
        for b, (pred_idx, tgt_idx) in enumerate(indices):
            t = targets[b]
            assert len(pred_idx) == len(tgt_idx) == sizes[b]
            if sizes[b] == 0:
                continue
            assert len(set(pred_idx.tolist())) == sizes[b]
            assert sorted(tgt_idx.tolist()) == list(range(sizes[b]))
            best, cost = brute_force(
                outputs["pred_logits"][b], outputs["pred_boxes"][b], t["labels"], t["boxes"]
            )
            total = sum(cost[p][j] for p, j in zip(pred_idx.tolist(), tgt_idx.tolist()))
            assert total == pytest.approx(best, abs=1e-4)


def test_cost_terms_are_each_weighted_term_written_out():
    g = torch.Generator().manual_seed(4)
    outputs, (t,) = random_problem(g, 1, 5, 3, [4])
    logits, boxes = outputs["pred_logits"][0], outputs["pred_boxes"][0]
    w = (0.5, 3.0, 1.5)  # not the defaults: each weight must reach its own term
    terms = cost_terms(logits, boxes, t["labels"], t["boxes"], *w)
    for i in range(5):
        for j in range(4):
            prob = torch.softmax(logits[i], -1)[t["labels"][j]].item()
            l1 = (boxes[i] - t["boxes"][j]).abs().sum().item()
            giou = giou_pair(boxes[i].tolist(), t["boxes"][j].tolist())
            assert terms["class"][i, j].item() == pytest.approx(-w[0] * prob, abs=1e-6)
            assert terms["bbox"][i, j].item() == pytest.approx(w[1] * l1, abs=1e-5)
            assert terms["giou"][i, j].item() == pytest.approx(-w[2] * giou, abs=1e-5)
            assert terms["total"][i, j].item() == pytest.approx(
                pair_cost(logits[i], boxes[i], t["labels"][j], t["boxes"][j], *w), abs=1e-5
            )
    # the matcher minimises exactly this total, for each weighting (one term at a time picks
    # other assignments than the defaults), checked by brute force over all maps
    for wc in (w, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)):
        total = cost_terms(logits, boxes, t["labels"], t["boxes"], *wc)["total"]
        ((rows, cols),) = HungarianMatcher(*wc)(outputs, [t])
        best = min(
            sum(total[p, j].item() for j, p in enumerate(preds))
            for preds in itertools.permutations(range(5), 4)
        )
        assert total[rows, cols].sum().item() == pytest.approx(best, abs=1e-5), wc


def test_matcher_batched_equals_per_image():
    g = torch.Generator().manual_seed(1)
    matcher = HungarianMatcher(1.0, 5.0, 2.0)
    outputs, targets = random_problem(g, 4, 10, 5, [3, 0, 7, 1])
    batched = matcher(outputs, targets)
    for b in range(4):
        single = matcher({k: v[b : b + 1] for k, v in outputs.items()}, [targets[b]])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])


def test_matcher_all_empty():
    g = torch.Generator().manual_seed(2)
    outputs, targets = random_problem(g, 2, 5, 3, [0, 0])
    for pred_idx, tgt_idx in HungarianMatcher()(outputs, targets):
        assert pred_idx.numel() == 0 and tgt_idx.numel() == 0


class FixedMatcher(torch.nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


def test_losses_equal_formulas():
    g = torch.Generator().manual_seed(3)
    b, n, k, c = 2, 5, 3, 7
    outputs, targets = random_problem(g, b, n, k, [2, 1])
    outputs["pred_feature"] = torch.randn(b, n, c, generator=g)
    outputs["patch_feature"] = torch.randn(b, 2, c, generator=g)
    indices = [(torch.tensor([4, 1]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([0]))]
    weights = {"loss_ce": 1.5, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_rec": 0.5}
    eos = 0.25
    crit = SetCriterion(k, FixedMatcher(indices), weights, eos_coef=eos, reconstruction=True)
    losses = crit(outputs, targets)
    num_boxes = 3

    # weighted CE: sum_i w_i * (-log p_i[y_i]) / sum_i w_i, no-object weighted eos
    num, den = 0.0, 0.0
    for bi in range(b):
        matched = dict(zip(indices[bi][0].tolist(), indices[bi][1].tolist()))
        for q in range(n):
            y = targets[bi]["labels"][matched[q]].item() if q in matched else k
            w = eos if y == k else 1.0
            logp = torch.log_softmax(outputs["pred_logits"][bi, q], -1)[y].item()
            num += -w * logp
            den += w
    assert losses["loss_ce"].item() == pytest.approx(1.5 * num / den, rel=1e-5)

    l1 = giou = rec = 0.0
    for bi in range(b):
        for q, j in zip(indices[bi][0].tolist(), indices[bi][1].tolist()):
            pb, tb = outputs["pred_boxes"][bi, q], targets[bi]["boxes"][j]
            l1 += (pb - tb).abs().sum().item()
            giou += 1 - giou_pair(pb.tolist(), tb.tolist())
            p, t = outputs["pred_feature"][bi, q], outputs["patch_feature"][bi, j]
            # L2-normalised by the plain L2 norm (the authors' code), squared error summed
            rec += sum((p[i] / p.norm() - t[i] / t.norm()).item() ** 2 for i in range(c))
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * l1 / num_boxes, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2.0 * giou / num_boxes, rel=1e-5)
    assert losses["loss_rec"].item() == pytest.approx(0.5 * rec / num_boxes, rel=1e-5)
    total = sum(losses[key].item() for key in weights)
    assert losses["loss"].item() == pytest.approx(total, rel=1e-6)
    assert "class_error" in losses and "class_error" not in weights


def test_aux_losses_match_each_layer_on_its_own():
    g = torch.Generator().manual_seed(4)
    cfg = get_config("smoke", ["model.dec_layers=3"])
    crit = build_criterion(cfg, pretext=False)
    assert set(crit.weight_dict) == {
        f"loss_{t}{s}" for t in ("ce", "bbox", "giou") for s in ("", "_0", "_1")
    }
    last, targets = random_problem(g, 2, 8, cfg.model.num_classes, [2, 3])
    aux = [random_problem(g, 2, 8, cfg.model.num_classes, [0, 0])[0] for _ in range(2)]
    losses = crit({**last, "aux_outputs": aux}, targets)
    for i, layer in enumerate(aux):
        alone = crit(layer, targets)
        for t in ("ce", "bbox", "giou"):
            assert losses[f"loss_{t}_{i}"].item() == pytest.approx(alone[f"loss_{t}"].item())
    assert losses["loss"].item() == pytest.approx(
        sum(v.item() for key, v in losses.items() if key.startswith("loss_"))
    )


def test_pretext_criterion_balance_and_empty_targets():
    cfg = get_config("smoke")  # N = 8, M = 2
    crit = build_criterion(cfg, pretext=True)
    assert crit.num_classes == 2 and crit.reconstruction
    assert crit.empty_weight.tolist() == [1.0, 1.0, 2 / 8]
    crit = build_criterion(get_config("smoke", ["loss.eos_from_groups=False"]), pretext=True)
    assert crit.empty_weight[-1].item() == pytest.approx(0.1)
    # detection images without any box: only the no-object CE remains
    det = build_criterion(cfg, pretext=False)
    g = torch.Generator().manual_seed(5)
    outputs, targets = random_problem(g, 2, 8, cfg.model.num_classes, [0, 0])
    losses = det(outputs, targets)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    expected = -torch.log_softmax(outputs["pred_logits"], -1)[..., -1].mean()
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_criterion_matcher_uses_each_cost_weight_for_its_own_term():
    """The matcher that build_criterion makes, checked term by term: with one cost weight
    non-zero at a time, and with three distinct weights, its assignment has the brute-force
    minimum cost under exactly those weights (a swapped cost_bbox / cost_giou fails)."""
    g = torch.Generator().manual_seed(6)
    problems = [random_problem(g, 2, 6, 4, [3, 4]) for _ in range(3)]
    cases = {"class": (1.0, 0.0, 0.0), "bbox": (0.0, 1.0, 0.0), "giou": (0.0, 0.0, 1.0)}
    cases["all"] = (1.5, 3.0, 0.7)
    chosen = {}
    for name, (wc, wb, wg) in cases.items():
        cfg = get_config(
            "smoke", [f"loss.cost_class={wc}", f"loss.cost_bbox={wb}", f"loss.cost_giou={wg}"]
        )
        matcher = build_criterion(cfg, pretext=False).matcher
        chosen[name] = []
        for outputs, targets in problems:
            for b, (pred_idx, tgt_idx) in enumerate(matcher(outputs, targets)):
                t = targets[b]
                best, cost = brute_force(
                    outputs["pred_logits"][b],
                    outputs["pred_boxes"][b],
                    t["labels"],
                    t["boxes"],
                    (wc, wb, wg),
                )
                total = sum(cost[p][j] for p, j in zip(pred_idx.tolist(), tgt_idx.tolist()))
                assert total == pytest.approx(best, abs=1e-5), (name, b)
                chosen[name].append(sorted(zip(tgt_idx.tolist(), pred_idx.tolist())))
    # the terms disagree on these problems, so each check above can tell them apart
    assert len({str(v) for v in chosen.values()}) == len(cases)
