"""What only the tutorial notebooks (notebooks/NN_*.py) and the patch-localization demo use;
the rest of the library does not import it (only ``updetr-lite notebooks`` runs notebooks.py).

  localize.py         images, query patches and one prediction, pixel boxes in and out
  training.py         training the demo's small lite checkpoint on a few photos
  checkpoints.py      which checkpoint the demo shows; the shipped one (demo_checkpoint/)
  widget.py           the demo's ipywidgets interface and its static figure
  notebook_checks.py  what the notebooks measure and record (RESULTS_DIR JSON)
  notebooks.py        the ``updetr-lite notebooks`` runner (papermill, HTML)

Paths of the checkout (its ``notebooks/``, ``runs/main``, ``.cache``) are always passed in by
the caller: the notebooks, the tests and the command line know where they run.
"""
