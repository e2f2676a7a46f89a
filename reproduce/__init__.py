"""The reproduction kit: the paper's tables and figures rebuilt from runs of the library.

``python -m reproduce.run --scale smoke|lite|paper [--only ...] --out DIR`` (``run``) plans
the runs each artefact needs (``plan``: types and dispatch; ``lite_plan``, ``paper_plan``:
the runs, schedules and budgets of each scale), executes each run's notebook of
``notebooks/`` with papermill (``execute``), starting training processes with ``launch``
and recording what finished in ``records``, then writes the report (``report``: the
paper's numbers, run folders, tables, figures, the Figure 5 localization study). The lite
scale's frozen CNN is trained by ``lite_cnn``. The library, ``updetr_lite``, knows nothing
of this folder.
"""
