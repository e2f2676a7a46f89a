"""Measurements the notebooks make and record, kept here so that they are tested.

- ``write_results`` / ``read_results``: each notebook writes its checkable values as JSON into
  a folder given by its ``RESULTS_DIR`` parameter; tests/test_notebooks.py reads them.
- ``cost_terms`` (the matcher's own, ``models.matcher.cost_terms``) / ``global_assignment`` /
  ``per_group_assignment``: the matching cost split into its three terms, and the two ways to
  assign query patches (notebook 03).
- ``group_influence``: how much the outputs of each query group move when one group's query
  patch changes (notebook 02: with the attention mask, other groups do not move at all).
- ``loss_fell``: did a training curve go down (notebook 04).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from scipy.optimize import linear_sum_assignment

from ..models.matcher import cost_terms  # noqa: F401  (notebook 03 shows the matcher's terms)


def write_results(results_dir, name: str, values: dict) -> Path:
    """Write ``values`` as ``RESULTS_DIR/<name>.json`` (folders created); returns the path.
    Values must be JSON-serialisable: call ``float()`` on tensors first."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json"
    path.write_text(json.dumps(values, indent=2, sort_keys=True))
    return path


def read_results(results_dir, name: str) -> dict:
    path = Path(results_dir) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path}: did notebook {name!r} run to the end?")
    return json.loads(path.read_text())


def global_assignment(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian assignment over all N predictions (the paper's and the authors' way).
    cost [N, n] -> (pred_idx, tgt_idx), sorted by pred_idx."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows), torch.as_tensor(cols)


def per_group_assignment(cost: torch.Tensor, num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The alternative: query patch g may only be matched inside its own group of N/M queries
    (queries g*N/M .. (g+1)*N/M - 1), to the cheapest one. cost [N, M] -> (pred_idx, tgt_idx)."""
    n_q, m = cost.shape
    if m != num_patches or n_q % num_patches:
        raise ValueError(
            f"per-group matching needs a cost [N, M] with N divisible by M={num_patches}, "
            f"got {tuple(cost.shape)}"
        )
    k = n_q // num_patches
    rows = torch.stack([cost[g * k : (g + 1) * k, g].argmin() + g * k for g in range(m)])
    return rows, torch.arange(m)


def assignment_cost(cost: torch.Tensor, assignment) -> float:
    rows, cols = assignment
    return float(cost[torch.as_tensor(rows), torch.as_tensor(cols)].sum())


@torch.no_grad()
def group_influence(
    model,
    features: torch.Tensor,
    mask: torch.Tensor,
    patch_boxes: torch.Tensor,
    group: int,
    shift: float = 0.5,
) -> dict[str, float]:
    """Move query patch ``group`` (its box shifted by ``shift`` of its size, so its patch
    feature changes) and measure how far every query's decoder output moves.

    model: an UPDETR in eval mode with patch_feature='roi' semantics via ``forward_features``
    (patch_boxes [B, M, 4] cxcywh). Returns {"own": max |change| of the group's outputs,
    "others": max |change| of every other group's outputs} over pred_boxes and pred_logits."""
    if model.training:
        raise ValueError("group_influence needs model.eval(): dropout and query shuffle add noise")
    before = model.forward_features(features, mask, patch_boxes=patch_boxes)
    moved = patch_boxes.clone()
    moved[:, group, 0] = (moved[:, group, 0] + shift * moved[:, group, 2]).clamp(0.05, 0.95)
    moved[:, group, 1] = (moved[:, group, 1] + shift * moved[:, group, 3]).clamp(0.05, 0.95)
    after = model.forward_features(features, mask, patch_boxes=moved)
    n = model.queries_per_patch
    own = torch.zeros(after["pred_boxes"].shape[1], dtype=torch.bool)
    own[group * n : (group + 1) * n] = True
    delta = (
        torch.cat(
            [(after[k] - before[k]).abs().amax(dim=(0, 2)) for k in ("pred_boxes", "pred_logits")]
        )
        .view(2, -1)
        .amax(0)
    )
    return {"own": float(delta[own].max()), "others": float(delta[~own].max())}


def loss_fell(values, fraction: float = 0.2, min_drop: float = 0.0) -> bool:
    """True when the mean of the last ``fraction`` of ``values`` is below the mean of the first
    ``fraction`` by more than ``min_drop`` (relative). Needs at least 2 finite values."""
    v = [float(x) for x in values]
    if len(v) < 2 or not all(math.isfinite(x) for x in v):
        return False
    k = max(1, int(len(v) * fraction))
    first, last = sum(v[:k]) / k, sum(v[-k:]) / k
    return last < first * (1 - min_drop)


def early_late_gap(a, b, fraction: float = 0.2) -> tuple[float, float]:
    """Mean of ``a - b`` over the first and over the last ``fraction`` of two curves logged at
    the same steps (Figure 6's question: which loss is lower early, which late). Negative: ``a``
    is lower. Uses the common length; needs at least 2 points."""
    v = [(float(x) - float(y)) for x, y in zip(a, b)]
    if len(v) < 2:
        raise ValueError(f"need two curves of at least 2 points, got {len(v)}")
    k = max(1, int(len(v) * fraction))
    return sum(v[:k]) / k, sum(v[-k:]) / k


def main_job_runs(names: dict, root, use: bool = True) -> dict | None:
    """{key: run folder} of the main job in ``root`` (``bash run.sh`` writes the checkout's
    ``runs/main/<name>``: the notebooks pass that folder) when ``use`` and every named run has
    its ``last.pth``; else None (the notebook trains its own).
    ``names``: {key: run name}, e.g. {"pretrain": "pre_crop_s0"}."""
    main = Path(root)
    dirs = {k: main / n for k, n in names.items()}
    if use and all((d / "last.pth").is_file() for d in dirs.values()):
        return dirs
    return None


def notebook_config(preset: str, overrides: list[str] | None = None, *, cache_dir):
    """``get_config(preset, overrides)`` with the data cache anchored in ``cache_dir`` (the
    notebooks pass the checkout's ``.cache/updetr_lite``: a notebook's working folder is
    ``notebooks/``, not the root)."""
    from ..config import get_config

    return get_config(preset, [*(overrides or []), f"data.cache_dir={Path(cache_dir)}"])


@torch.no_grad()
def dropped_patch_fraction(
    model, features: torch.Tensor, mask: torch.Tensor, patch_boxes: torch.Tensor, trials: int = 20
) -> float:
    """Fraction of (query, image) copies of a patch feature that patch dropout zeroed, seen
    in the ``query_pos`` the decoder receives (model in train mode, query shuffle off)."""
    if not model.training or model.query_shuffle:
        raise ValueError("dropped_patch_fraction needs model.train() and query_shuffle off")
    seen = []

    def grab(_mod, _args, kwargs):
        seen.append(kwargs["query_pos"].detach())

    handle = model.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for _ in range(trials):
            model.forward_features(features, mask, patch_boxes=patch_boxes)
    finally:
        handle.remove()
    nq = seen[0].shape[1]
    queries = model.query_embed.weight[:nq]
    carried = torch.stack(seen) - queries  # [trials, B, nq, d]: patch feature or zeros
    return float((carried.abs().amax(-1) < 1e-6).float().mean())
