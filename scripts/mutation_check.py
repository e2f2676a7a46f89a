"""Mutation check: does the test suite catch plausible one-line bugs?

Each mutant replaces one exact piece of source (found exactly once in its file) with a
plausible bug. The script copies the working tree (git's tracked and untracked, not ignored
files) to a temporary folder, applies one mutant at a time there, runs that mutant's test
files with one thread and a timeout, and restores the file. A mutant is caught when its tests
fail (or time out). The working tree is never written.

    python scripts/mutation_check.py                 # all mutants (about 30 min on 1 core)
    python scripts/mutation_check.py --only matcher  # names containing 'matcher'
    python scripts/mutation_check.py --list          # the mutants, nothing run
    python scripts/mutation_check.py --json out.json # also write the outcomes

tests/test_mutation_check.py checks (fast, nothing run) that every pattern is still found
exactly once, so that the list cannot rot silently when the code changes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str  # area: what the bug does
    path: str  # file, relative to the repository root
    old: str  # exact source text, found exactly once in the file
    new: str  # the bug
    tests: str  # pytest arguments: test files, optionally -k EXPR


M = Mutant
MODELS = "updetr_lite/models/"
ENGINE = "updetr_lite/engine/"
DATA = "updetr_lite/data/"
T = "tests/"

# fmt: off
MUTANTS = [
    # --- the Hungarian matcher and the criterion that builds it
    M("matcher: class cost sign flipped", MODELS + "matcher.py",
      "-cost_class * prob[:, tgt_labels]", "cost_class * prob[:, tgt_labels]",
      T + "test_matcher_losses.py"),
    M("matcher: L2 box distance instead of L1", MODELS + "matcher.py",
      "torch.cdist(pred_boxes.float(), tgt_boxes.float(), p=1)",
      "torch.cdist(pred_boxes.float(), tgt_boxes.float(), p=2)",
      T + "test_matcher_losses.py"),
    M("matcher: maximises the cost", MODELS + "matcher.py",
      "linear_sum_assignment(c[i].numpy())", "linear_sum_assignment(c[i].numpy(), maximize=True)",
      T + "test_matcher_losses.py"),
    M("matcher: raw logits instead of probabilities", MODELS + "matcher.py",
      "prob = pred_logits.float().softmax(-1)", "prob = pred_logits.float()",
      T + "test_matcher_losses.py"),
    M("criterion build: cost_bbox and cost_giou swapped", MODELS + "build.py",
      "HungarianMatcher(lc.cost_class, lc.cost_bbox, lc.cost_giou)",
      "HungarianMatcher(lc.cost_class, lc.cost_giou, lc.cost_bbox)",
      T + "test_matcher_losses.py"),
    M("criterion build: pretext ignores the M/N balance", MODELS + "build.py",
      "eos = cfg.pretext.num_patches / m.num_queries if lc.eos_from_groups else lc.eos_coef",
      "eos = lc.eos_coef",
      T + "test_matcher_losses.py"),
    M("criterion build: one aux layer too few", MODELS + "build.py",
      "for i in range(m.dec_layers - 1):", "for i in range(m.dec_layers - 2):",
      T + "test_matcher_losses.py"),
    # --- the losses
    M("losses: no-object weight on class 0", MODELS + "criterion.py",
      "empty_weight[-1] = eos_coef", "empty_weight[0] = eos_coef",
      T + "test_matcher_losses.py"),
    M("losses: L1 averaged instead of divided by the box count", MODELS + "criterion.py",
      'F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes',
      'F.l1_loss(src_boxes, tgt_boxes, reduction="mean")',
      T + "test_matcher_losses.py"),
    M("losses: GIoU not divided by the box count", MODELS + "criterion.py",
      'losses["loss_giou"] = (1 - giou).sum() / num_boxes',
      'losses["loss_giou"] = (1 - giou).sum()',
      T + "test_matcher_losses.py"),
    M("losses: reconstruction without L2 normalisation", MODELS + "criterion.py",
      "err = (F.normalize(pred, dim=-1) - F.normalize(target, dim=-1)).pow(2).sum(-1)",
      "err = (pred - target).pow(2).sum(-1)",
      T + "test_matcher_losses.py"),
    M("losses: aux layers named in reverse order", MODELS + "criterion.py",
      'enumerate(outputs.get("aux_outputs", []))',
      'enumerate(outputs.get("aux_outputs", [])[::-1])',
      T + "test_matcher_losses.py"),
    M("losses: box count may be 0", MODELS + "criterion.py",
      "return max(n.item(), 1.0)", "return n.item()",
      T + "test_matcher_losses.py"),
    # --- DETR heads and auxiliary outputs
    M("detr: aux_outputs from the wrong layers", MODELS + "detr.py",
      'out["aux_outputs"] = per_layer[:-1]', 'out["aux_outputs"] = per_layer[1:]',
      T + "test_models.py"),
    M("detr: aux_outputs never returned", MODELS + "detr.py",
      "        if self.aux_loss:\n", "        if not self.aux_loss:\n",
      T + "test_models.py"),
    M("detr: boxes without sigmoid", MODELS + "detr.py",
      "boxes = self.bbox_embed(hs).sigmoid()", "boxes = self.bbox_embed(hs)",
      T + "test_models.py"),
    M("detr: box MLP without its ReLUs", MODELS + "detr.py",
      "x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))", "x = layer(x)",
      T + "test_models.py"),
    # --- the group mask, query shuffle, patch queries
    M("group mask: interleaved groups", MODELS + "updetr.py",
      "group = torch.arange(num_queries) // (num_queries // num_patches)",
      "group = torch.arange(num_queries) % num_patches",
      T + "test_models.py " + T + "test_inference.py"),
    M("group mask: blocks inverted", MODELS + "updetr.py",
      "mask[group[:, None] == group[None, :]] = 0.0",
      "mask[group[:, None] != group[None, :]] = 0.0",
      T + "test_models.py " + T + "test_inference.py"),
    M("group mask: never applied", MODELS + "updetr.py",
      "tgt_mask = self.group_mask[:nq, :nq] if self.attention_mask else None",
      "tgt_mask = None",
      T + "test_inference.py"),
    M("query shuffle: inverted switch", MODELS + "updetr.py",
      "if self.training and self.query_shuffle:", "if self.training and not self.query_shuffle:",
      T + "test_models.py"),
    M("patch queries: patches interleaved, not grouped", MODELS + "updetr.py",
      ".repeat_interleave(n, dim=1)  # [B, nq, d]", ".repeat(1, n, 1)  # [B, nq, d]",
      T + "test_models.py"),
    M("patch dropout: one draw per image, not per query copy", MODELS + "updetr.py",
      "keep = torch.rand(b, nq, 1, device=carried.device) >= self.patch_dropout",
      "keep = torch.rand(b, 1, 1, device=carried.device) >= self.patch_dropout",
      T + "test_models.py"),
    M("localize: scores of the wrong class", MODELS + "updetr.py",
      "scores = logits.softmax(-1)[..., 1].view(", "scores = logits.softmax(-1)[..., 0].view(",
      T + "test_inference.py"),
    # --- box conversions
    M("roi feature: box scale (h, w, h, w)", MODELS + "updetr.py",
      "scale = torch.stack((valid_w, valid_h, valid_w, valid_h), -1)[:, None]",
      "scale = torch.stack((valid_h, valid_w, valid_h, valid_w), -1)[:, None]",
      T + "test_models.py"),
    M("query patches: boxes normalised by (h, w, h, w)", DATA + "query_patches.py",
      'box_convert(boxes_xyxy / torch.tensor([w, h, w, h]), "xyxy", "cxcywh")',
      'box_convert(boxes_xyxy / torch.tensor([h, w, h, w]), "xyxy", "cxcywh")',
      T + "test_pretext_data.py"),
    M("query patches: width drawn on the height", DATA + "query_patches.py",
      "x0, bw = draw(w)", "x0, bw = draw(h)",
      T + "test_pretext_data.py"),
    M("detection data: boxes normalised by (h, w, h, w)", DATA + "transforms.py",
      "scale = torch.tensor([w, h, w, h], dtype=torch.float32)",
      "scale = torch.tensor([h, w, h, w], dtype=torch.float32)",
      T + "test_detection_data.py"),
    M("detection data: crop offset drawn from the wrong side", DATA + "transforms.py",
      "left = int(torch.randint(0, w - cw + 1, ()))", "left = int(torch.randint(0, h - ch + 1, ()))",
      T + "test_detection_data.py"),
    M("detection data: never flipped", DATA + "transforms.py",
      "v2.RandomHorizontalFlip(p=0.5)", "v2.RandomHorizontalFlip(p=0.0)",
      T + "test_detection_data.py"),
    M("collate: padding mask transposed", DATA + "collate.py",
      "mask[i, : im.shape[-2], : im.shape[-1]] = False",
      "mask[i, : im.shape[-1], : im.shape[-2]] = False",
      T + "test_detection_data.py " + T + "test_pretext_data.py"),
    # --- evaluation
    M("evaluate: drops low-score detections", ENGINE + "evaluate.py",
      'xywh, det["scores"].tolist())\n    ]',
      'xywh, det["scores"].tolist())\n        if s > 0.05\n    ]',
      T + "test_evaluate.py"),
    M("evaluate: no-object counted as a class", ENGINE + "evaluate.py",
      'probs = outputs["pred_logits"].float().softmax(-1)[..., :-1]',
      'probs = outputs["pred_logits"].float().softmax(-1)',
      T + "test_evaluate.py"),
    M("evaluate: pixel scale (h, w, h, w)", ENGINE + "evaluate.py",
      "scale = torch.stack((w, h, w, h), -1)[:, None, :]",
      "scale = torch.stack((h, w, h, w), -1)[:, None, :]",
      T + "test_evaluate.py"),
    M("evaluate: COCO bbox from the wrong format", ENGINE + "evaluate.py",
      'box_convert(det["boxes"], "xyxy", "xywh")', 'box_convert(det["boxes"], "xyxy", "cxcywh")',
      T + "test_evaluate.py"),
    # --- checkpoints and resume
    M("resume: LR scheduler not restored", ENGINE + "run_state.py",
      'scheduler.load_state_dict(ckpt["scheduler"])', "pass",
      T + "test_checkpoint_resume.py -k lr_drop"),
    M("resume: RNG states not restored", ENGINE + "run_state.py",
      "set_rng_state(rngs[info.rank])", "pass",
      T + "test_checkpoint_resume.py -k sigkill"),
    M("resume: batches already done not skipped", ENGINE + "loop.py",
      "data.sampler.start = run.batches_done * self.per_rank", "data.sampler.start = 0",
      T + "test_checkpoint_resume.py -k sigkill"),
    M("resume: log records after the checkpoint kept", ENGINE + "run_state.py",
      'path.write_text("".join(lines[:keep]))', 'path.write_text("".join(lines))',
      T + "test_checkpoint_resume.py -k lr_drop"),
    M("checkpoint kind: authors' names not recognised", ENGINE + "checkpoint.py",
      "state = kit_names(model_state(ckpt))", "state = model_state(ckpt)",
      T + "test_cli.py -k authors"),
    M("checkpoint settings: mismatch not detected", ENGINE + "checkpoint.py",
      "if k in saved and saved[k] != getattr(model_cfg, k)", "if False",
      T + "test_cli.py -k mismatch"),
    M("pretext init: class head kept", MODELS + "weights.py",
      'if name.startswith(("class_embed.",) + PRETEXT_ONLY):',
      "if name.startswith(PRETEXT_ONLY):",
      T + "test_weights.py"),
    M("pretext init: authors' feature_align.layers.1 renamed wrongly", MODELS + "weights.py",
      '"feature_align.layers.1.": "reconstruction_head.2.",',
      '"feature_align.layers.1.": "reconstruction_head.1.",',
      T + "test_weights.py " + T + "test_inference.py -k authors"),
    # --- data seeds and order
    M("data seed: ignores the epoch", ENGINE + "seeding.py",
      "np.random.SeedSequence([self.seed, self.epoch, int(i)])",
      "np.random.SeedSequence([self.seed, int(i)])",
      T + "test_checkpoint_resume.py -k item_seed"),
    M("sampler: skips from the end instead of the start", ENGINE + "distributed.py",
      "return iter(list(super().__iter__())[self.start :])",
      "return iter(list(super().__iter__())[: len(self)])",
      T + "test_checkpoint_resume.py -k sigkill"),
]
# fmt: on


def _split(tests: str) -> list[str]:
    """'a.py b.py -k EXPR WITH SPACES' -> pytest arguments (the -k expression is the rest)."""
    head, sep, expr = tests.partition(" -k ")
    return shlex.split(head) + (["-k", expr] if sep else [])


def check_patterns(root: Path = ROOT) -> list[str]:
    """Problems with the list: a pattern not found exactly once, a missing test file, a
    repeated name, a mutant that changes nothing. Empty when the list applies."""
    problems, names = [], set()
    for m in MUTANTS:
        if m.name in names:
            problems.append(f"{m.name}: repeated name")
        names.add(m.name)
        path = root / m.path
        if not path.is_file():
            problems.append(f"{m.name}: no file {m.path}")
            continue
        n = path.read_text().count(m.old)
        if n != 1:
            problems.append(f"{m.name}: pattern found {n} times in {m.path}")
        if m.old == m.new:
            problems.append(f"{m.name}: the mutant changes nothing")
        for arg in _split(m.tests):
            if arg.startswith(T) and not (root / arg).is_file():
                problems.append(f"{m.name}: no test file {arg}")
    return problems


def _copy_tree(root: Path, dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _run_tests(copy: Path, tests: str, timeout: float) -> tuple[str, float]:
    """'passed', 'failed', 'timeout' or 'no tests' for one pytest run in ``copy``."""
    env = dict(
        os.environ,
        PYTHONPATH=str(copy),
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *_split(tests)]
    t0 = time.time()
    try:
        rc = subprocess.run(
            cmd, cwd=copy, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=timeout,
        ).returncode  # fmt: skip
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t0
    outcome = {0: "passed", 5: "no tests"}.get(rc, "failed")
    return outcome, time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only", action="append", default=[], help="names containing this (repeatable)"
    )
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    ap.add_argument("--json", default=None, help="write the outcomes to this file")
    args = ap.parse_args(argv)
    problems = check_patterns()
    if problems:
        print("the mutant list no longer applies:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    mutants = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in mutants:
            print(f"{m.name}  [{m.path}; {m.tests}]")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        copy = Path(tmp) / "repo"
        _copy_tree(ROOT, copy)
        broken = set()
        if not args.no_baseline:  # each test selection must pass without a mutant
            for tests in sorted({m.tests for m in mutants}):
                outcome, secs = _run_tests(copy, tests, args.timeout)
                print(f"baseline {outcome:8s} {secs:6.1f}s  {tests}", flush=True)
                if outcome != "passed":
                    broken.add(tests)
        for i, m in enumerate(mutants, 1):
            if m.tests in broken:
                outcome, secs = "baseline fails", 0.0
            else:
                path = copy / m.path
                original = path.read_text()
                path.write_text(original.replace(m.old, m.new, 1))
                try:
                    outcome, secs = _run_tests(copy, m.tests, args.timeout)
                finally:
                    path.write_text(original)
            verdict = {"failed": "caught", "timeout": "caught (timeout)"}.get(outcome)
            verdict = verdict or ("NOT CAUGHT" if outcome == "passed" else outcome)
            results.append({"name": m.name, "path": m.path, "outcome": verdict, "s": secs})
            print(f"[{i:2d}/{len(mutants)}] {verdict:16s} {secs:6.1f}s  {m.name}", flush=True)
    counted = [r for r in results if r["outcome"].startswith(("caught", "NOT"))]
    caught = [r for r in counted if r["outcome"].startswith("caught")]
    score = 100 * len(caught) / max(len(counted), 1)
    print(f"\ncaught {len(caught)} of {len(counted)} mutants: {score:.1f} %")
    for r in results:
        if not r["outcome"].startswith("caught"):
            print(f"  {r['outcome']}: {r['name']} ({r['path']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"score": score, "results": results}, indent=2))
    return 0 if len(caught) == len(counted) else 1


if __name__ == "__main__":
    raise SystemExit(main())
