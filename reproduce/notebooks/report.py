# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (updetr-lite)
#     language: python
#     name: updetr-lite
# ---

# %% [markdown]
# # The reproduction report
#
# Tables 1-4 (Markdown and CSV) and Figures 1, 3, 4, 5, 6 (PNG), rebuilt from the run
# folders beside this one, with the paper's numbers and the differences. A run that is
# absent, unfinished or failed shows as missing.

# %% tags=["parameters"]
# Parameters (papermill replaces this cell; the defaults run a toy example by hand)
run_name = "example"
run_dir = "runs/notebook_example"
out_root = "runs"
scale = "smoke"
preset = "smoke"
overrides = []
seed = 0
threads = 1
user_overrides = []

# %%
from pathlib import Path

from IPython.display import Markdown, display

from reproduce import report
from reproduce.plan import plan

run_dir = Path(run_dir).resolve()
run_dir.mkdir(parents=True, exist_ok=True)
print(f"run {run_name} ({scale} scale) -> {run_dir}")

# %%
p = plan(scale)
result = report.build_report(p, out_root, run_dir)
if result["missing"]:
    print("runs without a result:", ", ".join(result["missing"]))
display(Markdown((run_dir / "report.md").read_text()))
