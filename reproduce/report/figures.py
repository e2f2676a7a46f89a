"""The paper's learning-curve figures (1, 3, 4, 6) and the plots that end a run notebook."""

from __future__ import annotations

from pathlib import Path

from updetr_lite.jsonl import read_jsonl

from .runs import RunData, curve, eval_records, load_run, steps_per_epoch


def _plt():
    """pyplot; the Agg backend outside a notebook kernel (inside, figures show inline)."""
    import sys

    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(y: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists)."""
    out, acc = [], 0.0
    for i, v in enumerate(y):
        acc += v
        if i >= window:
            acc -= y[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(
    plan,
    rows,
    out_root: str | Path,
    key: str,
    path: str | Path,
    title: str,
    x_key: str = "step",
    window: int = 1,
    ax=None,
):
    """One line per run (colour per arm, style per seed); a missing run is named in the
    legend as missing. Returns the list of run names that had no data."""
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    missing = []
    styles = ["-", "--", ":", "-."]
    loaded = {n: load_run(out_root, n) for row in rows for n in row.runs}
    x_key = figure_x_key(list(loaded.values()), x_key)
    for i, row in enumerate(rows):
        color = f"C{i}"
        for j, name in enumerate(row.runs):
            run = loaded[name]
            x, y = curve(run.records, key, x_key)
            if not x:
                missing.append(name)
                ax.plot(
                    [], [], color=color, ls=styles[j % 4], label=f"{row.label} [{name}: missing]"
                )
                continue
            if window > 1:
                y = smooth(y, window)
            tag = "" if run.status == "done" else f" ({run.status})"
            if run.shortened:
                t = run.trained
                tag = f" (SHORTENED: {t.get('steps')}/{t.get('plan_steps')} steps)"
            marker = "o" if len(x) < 60 else None  # evaluations: few points, show each
            ax.plot(
                x,
                y,
                color=color,
                ls=styles[j % 4],
                lw=1.4,
                marker=marker,
                ms=3,
                label=f"{row.label} [{name}]{tag}",
            )
    ax.set_xlabel("epoch (step / steps per epoch)" if x_key == "epoch" else "optimizer step")
    ax.set_ylabel(key if key == "loss" else f"{key} (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5)
    if own:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return missing


def figure_x_key(runs: list[RunData], wanted: str) -> str:
    """The x axis of one figure: fractional epochs when asked for and every run with records
    says how many steps an epoch has (its plan record), else optimizer steps for all."""
    if wanted == "epoch" and all(steps_per_epoch(r.records) for r in runs if r.records):
        return "epoch"
    return "step"


def plot_run(run_dir: str | Path, path: str | Path | None = None):
    """The plots that end a run notebook: training loss and, for fine-tuning, AP / AP50."""
    plt = _plt()
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "log.jsonl") if (run_dir / "log.jsonl").exists() else []
    x, loss = curve(records, "loss")
    ev = eval_records(records)
    ncols = 2 if ev else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.4), squeeze=False)
    ax = axes[0, 0]
    if x:
        ax.plot(x, loss, lw=0.8, alpha=0.5, label="loss")
        ax.plot(x, smooth(loss, 10), lw=1.5, label="loss (moving average)")
    ax.set_xlabel("step")
    ax.set_title(f"{run_dir.name}: training loss", fontsize=10)
    ax.legend(fontsize=8)
    if ev:
        ax = axes[0, 1]
        for k in ("AP", "AP50"):
            xs, ys = curve(records, k)
            ax.plot(xs, ys, marker=".", label=k)
        ax.set_xlabel("step")
        ax.set_title("validation", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=100)
    return fig


def plot_loss_terms(run_dir: str | Path, path: str | Path | None = None):
    """One panel per weighted loss term of the last decoder layer (class, L1, GIoU,
    reconstruction); None when the log has no training record yet."""
    plt = _plt()
    records = read_jsonl(Path(run_dir) / "log.jsonl")
    keys = [k for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_rec") if curve(records, k)[0]]
    if not keys:
        print("no training records in the log yet")
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        x, y = curve(records, k)
        ax.plot(x, y, lw=0.8, alpha=0.6)
        ax.plot(x, smooth(y, 10), lw=1.5)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=100)
    return fig


# ----------------------------------------------------------------------------- report


FIGURES = {
    "fig1": ("table1", "AP50", "Figure 1: AP50 learning curves, DETR vs UP-DETR"),
    "fig3": ("fig3", "AP", "Figure 3: AP learning curves"),
    "fig4": ("table4", "AP50", "Figure 4: AP50 learning curves of the Table 4 ablations"),
    "fig6": ("fig6", "loss", "Figure 6: pretext loss with and without the attention mask"),
}
