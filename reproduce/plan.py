"""What to run: the runs each artefact of the paper needs, at one scale.

A *run* is one folder ``OUT/<name>/`` made by one parameterized notebook of
``reproduce/notebooks/`` (executed by ``reproduce.execute``): the lite CNN, a pre-training,
a fine-tuning, the query-patch localization study or the report. ``plan(scale)`` returns
the runs and, per artefact (table or figure), its rows: an arm, its runs (one per seed) and
the paper's number it stands beside.

Scales:

- ``paper``: the paper's settings (Tables 1-4, Figures 1, 3-6); needs ImageNet, VOC07+12,
  COCO and a SwAV ResNet-50 on local disk (``reproduce.paper_plan``).
- ``lite``: the embedded data on a CPU (``reproduce.lite_plan``). Deviations, each a named
  config option (``presets.LITE_DEVIATIONS``): a small CNN trained by the kit
  (``reproduce.lite_cnn``), LayerScale on the encoder blocks, cached CNN features and a
  cached bank of crop patch features, fp32 on every CPU, step budgets instead of epochs,
  N = 20 queries with M = 4 patches standing in for the paper's N = 100, M = 10; the 'roi'
  patch feature runs beside the paper's crop, and the authors' release's unshuffled object
  queries beside the paper's shuffle (Table 4's (e) and (f)).
- ``smoke``: every lite run at toy size, for the tests.

``MAIN_ARTEFACTS`` is the README's main job (``bash run.sh``): the lite CNN, Table 1 /
Figure 1 (C1), Figure 6 (C4), Figure 5 (C5) and the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from updetr_lite.config import RANDOM_CNN, get_config

SCALES = ("smoke", "lite", "paper")
ARTEFACTS = ("table1", "table2", "table3", "table4", "fig1", "fig3", "fig4", "fig5", "fig6")
MAIN_ARTEFACTS = ("table1", "fig1", "fig5", "fig6")  # C1, C5, C4 of the lite main job


class ReproduceError(ValueError):
    """A request the driver cannot run; the message is one line for the user."""


class MissingDataError(FileNotFoundError):
    """A paper-scale run needs a file or folder that is not there."""


@dataclass(frozen=True)
class Run:
    """One run: a notebook executed into ``OUT/<name>/``.

    kind: lite_cnn | pretrain | finetune | localize | report.
    overrides: ``section.field=value`` strings on top of the scale's preset.
    init: name of the pre-training run whose ``last.pth`` initialises this fine-tuning.
    needs: runs whose ``DONE`` this one waits for (a failed need blocks it).
    """

    name: str
    kind: str
    overrides: tuple[str, ...] = ()
    init: str | None = None
    needs: tuple[str, ...] = ()
    seed: int = 0
    late: tuple[str, ...] = ()  # applied after the user's overrides (e.g. the COCO root)
    cost: float = 1.0  # relative run time: the longest pre-trainings start first


@dataclass(frozen=True)
class Row:
    """One line of a table or curve of a figure: an arm, its runs (one per seed), the key of
    the paper's number it stands beside (``report.PAPER``) and the rows it is compared with."""

    label: str
    runs: tuple[str, ...]
    paper: str | None = None
    # labels of the rows of the same artefact this row is compared with, as the paper does
    # (e.g. UP-DETR/300 vs DETR/300); the report's gains and the Summary's claims
    vs: tuple[str, ...] = ()


@dataclass
class Plan:
    scale: str
    preset: str
    runs: dict[str, Run]
    # artefact -> rows; fig5 and fig6 list pre-training runs
    artefacts: dict[str, list[Row]]
    notes: dict[str, str] = field(default_factory=dict)
    # x axis of learning curves: 'step', or 'epoch' (fractional: step / steps per epoch)
    x_key: str = "step"

    def runs_for(self, only: list[str] | None = None, runs: list[str] | None = None) -> list[str]:
        """Run names (needs included, in dependency order) for the artefacts in ``only``
        (all when None), or for the named ``runs`` alone (part of an artefact); 'report' is
        always last."""
        unknown = [r for r in runs or () if r not in self.runs]
        if unknown:
            raise ReproduceError(f"--runs: unknown run(s) {', '.join(unknown)} (see --list)")
        wanted = [] if runs else list(ARTEFACTS) if not only else only
        bad = [a for a in wanted if a not in ARTEFACTS and a != "report"]
        if bad:
            raise ReproduceError(
                f"--only: unknown artefact(s) {', '.join(bad)}; choose from "
                f"{', '.join(ARTEFACTS)}, report"
            )
        names: list[str] = []

        def add(name: str) -> None:
            if name in names:
                return
            for need in self.runs[name].needs:
                add(need)
            names.append(name)

        for r in runs or ():
            add(r)
        for a in wanted:
            for row in self.artefacts.get(a, []):
                for r in row.runs:
                    add(r)
            if a == "fig5":
                add("localize")
        add("report")
        return names


def table4_rows(detr: str, detr_runs, a, b, c, d) -> list[Row]:
    """Table 4's rows, (label, runs) each, with the cells the paper compares: every case
    against DETR, frozen against trained CNN at equal reconstruction ((b) vs (a), (d) vs
    (c)) and reconstruction against none with the frozen CNN ((d) vs (b))."""
    return [
        Row(detr, tuple(detr_runs), "table4/DETR"),
        Row(a[0], tuple(a[1]), "table4/a", (detr,)),
        Row(b[0], tuple(b[1]), "table4/b", (detr, a[0])),
        Row(c[0], tuple(c[1]), "table4/c", (detr,)),
        Row(d[0], tuple(d[1]), "table4/d", (detr, c[0], b[0])),
    ]


def plan(scale: str) -> Plan:
    """The runs and artefacts of ``scale`` (smoke | lite | paper)."""
    if scale not in SCALES:
        raise ReproduceError(f"unknown scale {scale!r}: choose smoke, lite or paper")
    if scale == "paper":
        from .paper_plan import paper_plan

        return paper_plan()
    from .lite_plan import small_plan

    return small_plan(scale)


def run_config(p: Plan, name: str, out: Path, overrides: list[str] = ()):
    """The resolved Config of run ``name`` (what its notebook passes to the trainer)."""
    return get_config(p.preset, run_overrides(p, name, out, overrides))


def run_overrides(p: Plan, name: str, out: Path, overrides: list[str] = ()) -> list[str]:
    """Plan overrides of run ``name``, then the lite CNN's weights (small scales), then the
    user's (they win)."""
    ov = list(p.runs[name].overrides)
    # one data and feature cache for every run, wherever a notebook's kernel starts
    ov.append(f"data.cache_dir={Path(get_config(p.preset).data.cache_dir).resolve()}")
    if "cnn" in p.runs and p.runs[name].kind != "lite_cnn":
        ov.append(f"model.backbone_weights={Path(out).resolve() / 'cnn' / 'cnn.pth'}")
    return ov + list(overrides) + list(p.runs[name].late)


# ----------------------------------------------------------------------------- paper data

HOW_TO_GET = {
    "data.pretext_root": (
        "the ImageNet-1k train folder (ILSVRC2012_img_train from https://image-net.org, "
        "unpacked to one sub-folder per class)"
    ),
    "data.detection_root": (
        "the VOCdevkit folder holding VOC2007 (trainval+test) and VOC2012 (trainval) from "
        "http://host.robots.ox.ac.uk/pascal/VOC/"
    ),
    "coco_root": (
        "the COCO 2017 folder with train2017/, val2017/ and annotations/ from https://cocodataset.org"
    ),
    "model.backbone_weights": (
        "SwAV's ResNet-50 (swav_800ep_pretrain.pth.tar from "
        "https://github.com/facebookresearch/swav, 800 epochs)"
    ),
}


def check_paper_inputs(p: Plan, names: list[str], overrides: list[str], coco_root: str | None):
    """Raise MissingDataError naming the first missing path the selected runs need."""
    if p.scale != "paper":
        return
    cfg = get_config("paper", list(overrides))
    kinds = {p.runs[n].kind for n in names}
    need = []
    if "pretrain" in kinds:
        need.append(("data.pretext_root", cfg.data.pretext_root))
    if any(
        p.runs[n].kind == "finetune" and "data.detection=coco" not in p.runs[n].overrides
        for n in names
    ):
        need.append(("data.detection_root", cfg.data.detection_root))
    if any("data.detection=coco" in p.runs[n].overrides for n in names):
        need.append(("coco_root", coco_root or ""))
    if kinds & {"pretrain", "finetune"} and cfg.model.backbone_weights != RANDOM_CNN:
        need.append(("model.backbone_weights", cfg.model.backbone_weights or ""))
    for key, path in need:
        if not path or not os.path.exists(path):
            flag = "--coco-root PATH" if key == "coco_root" else f"--set {key}=PATH"
            shown = repr(path) if path else "not set"
            raise MissingDataError(
                f"paper scale needs {key} ({shown}): give {flag}, {HOW_TO_GET[key]}"
                + (
                    f" (or --set {key}={RANDOM_CNN}: a random CNN, on purpose)"
                    if key == "model.backbone_weights"
                    else ""
                )
            )
