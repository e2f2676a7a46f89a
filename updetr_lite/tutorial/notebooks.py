"""Execute the tutorial notebooks with papermill and render executed copies as HTML.

``render_notebooks(notebook_dir, out_dir, smoke=False)`` is what ``updetr-lite notebooks``
calls; the test suite runs ``execute_notebook`` on each notebook with ``SMOKE=True``. The
notebooks live in the checkout's ``notebooks/`` (committed without outputs; the caller passes
that folder), run on the ``updetr-lite`` kernel, and write their checkable values as JSON into
their ``RESULTS_DIR`` parameter.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

KERNEL = "updetr-lite"
NOTEBOOKS = (
    "00_updetr_in_one_page",
    "01_random_query_patches",
    "02_multi_query_patches",
    "03_matching_and_losses",
    "04_pretraining_live",
    "05_finetuning",
    "06_patch_localization_demo",
)


class NotebookError(RuntimeError):
    """A notebook that failed to run; the message names it and its executed copy."""


def kernel_manager_class():
    """jupyter_client's AsyncKernelManager, with two changes that keep a papermill run quiet:

    - IPC transport (unix sockets in a private temporary folder), not localhost TCP ports:
      ipykernel warns "Kernel is running over TCP without encryption" on every TCP start;
    - no SIGINT at shutdown: jupyter_client interrupts the kernel before asking it to shut
      down, and a kernel idle in its event loop then logs "KeyboardInterrupt caught in
      kernel" as an ERROR (papermill shuts the kernel down after its last cell: nothing runs).
    """
    import tempfile

    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.transport = "ipc"
            self.ip = str(Path(tempfile.mkdtemp(prefix="updetr-kernel-")) / "kernel")

        async def _async_interrupt_kernel(self):
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietKernelManager


def notebook_env(project, tmp: Path | None = None, agg: bool = True) -> dict[str, str]:
    """Environment for a kernel: caches in the ``project`` folder (the checkout, the folder
    above the notebooks) or ``tmp``, the project importable even where the kit is not
    pip-installed, and Agg plots when ``agg`` (tests: nothing to show); without it the
    kernel's inline backend puts the figures into the outputs."""
    root = Path(project)
    cache = Path(tmp) if tmp else root / ".cache"
    env = {
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "JUPYTER_CONFIG_DIR": str(cache / "jupyter" / "config"),
        "JUPYTER_DATA_DIR": str(cache / "jupyter" / "data"),
        "JUPYTER_RUNTIME_DIR": str(cache / "jupyter" / "runtime"),
        "IPYTHONDIR": str(cache / "ipython"),
        "TORCH_HOME": str(root / ".cache" / "torch"),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    if agg:
        env["MPLBACKEND"] = "Agg"
    for key in ("MPLCONFIGDIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def execute_notebook(
    notebook_dir,
    name: str,
    out_dir,
    parameters: dict | None = None,
    kernel_name: str = KERNEL,
    timeout: int = 1800,
    env_dir=None,
    agg: bool = True,
) -> Path:
    """Run ``notebook_dir/<name>.ipynb`` (the checkout's ``notebooks/``) with papermill into
    ``out_dir/<name>.ipynb`` (the working folder is ``notebook_dir``); ``RESULTS_DIR``
    defaults to ``out_dir/results``. Returns the executed copy's path; raises NotebookError
    naming the cell that failed."""
    import papermill as pm

    notebook_dir = Path(notebook_dir).resolve()
    src = notebook_dir / f"{name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(f"notebook not found: {src}")
    out_dir = Path(out_dir).resolve()  # the kernel runs in notebooks/: no relative paths
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"RESULTS_DIR": str(out_dir / "results"), **(parameters or {})}
    dest = out_dir / f"{name}.ipynb"
    saved = dict(os.environ)
    os.environ.pop("MPLBACKEND", None)
    os.environ.update(
        notebook_env(notebook_dir.parent, env_dir, agg)
    )  # the kernel inherits this environment
    try:
        pm.execute_notebook(
            str(src),
            str(dest),
            parameters=params,
            kernel_name=kernel_name,
            cwd=str(notebook_dir),
            execution_timeout=timeout,
            progress_bar=False,
            kernel_manager_class=kernel_manager_class(),
        )
    except pm.PapermillExecutionError as e:
        raise NotebookError(
            f"notebook {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} (see {dest})"
        ) from e
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return dest


IMAGE_TYPES = ("image/png", "image/jpeg")
NO_ALT = "No description has been provided for this image"  # nbconvert's placeholder


def _plain(text: str) -> str:
    """Markdown to plain text: links to their words, no emphasis, code or math marks."""
    return re.sub(r"[*_`]|\$", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)).strip()


def _first_sentence(markdown: str, limit: int = 200) -> str:
    """A markdown cell in a line: its heading (if it starts with one) and its first sentence."""
    lines = [line.strip() for line in markdown.splitlines() if line.strip()]
    heading = _plain(lines.pop(0).lstrip("#")) if lines and lines[0].startswith("#") else ""
    text = _plain(" ".join(lines))
    end = re.search(r"(?<=[.:!?])\s", text)
    text = text[: end.start()] if end else text
    text = f"{heading}: {text}" if heading and text else heading or text
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def figure_descriptions(nb) -> list[str]:
    """One alt text per image output of ``nb``, in page order: the figure's notebook
    heading and the first sentence of the markdown cell that introduces it (the notebooks
    narrate each picture just before the cell that draws it)."""
    title, said, alts = "", "", []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            if not title:  # the notebook's own heading
                title = _plain(cell.source.strip().split("\n", 1)[0].lstrip("#"))
            said = _first_sentence(cell.source)
        elif cell.cell_type == "code":
            # an image shows unless a richer type of the same output wins (display priority)
            n = sum(
                any(t in out.get("data", {}) for t in IMAGE_TYPES)
                and not any(t in out.get("data", {}) for t in ("text/html", "image/svg+xml"))
                for out in cell.get("outputs", [])
            )
            for i in range(n):
                part = f" (picture {i + 1} of {n})" if n > 1 else ""
                alts.append(f"{title}: {said or 'figure'}{part}")
    return alts


def to_html(executed: Path, html_dir) -> Path:
    """Render an executed notebook as a standalone HTML file (nbconvert), each figure with
    an alt text from the narrative (``figure_descriptions``)."""
    import html as html_lib
    import logging

    import nbformat
    from nbconvert import HTMLExporter

    html_dir = Path(html_dir)
    html_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(executed, as_version=4)
    # nbconvert's lab template cannot carry alt text: it writes a placeholder (and warns
    # once per page, hence errors only from this exporter), replaced here in page order
    quiet = logging.getLogger("updetr_lite.nbconvert")
    quiet.setLevel(logging.ERROR)
    body, _ = HTMLExporter(log=quiet).from_notebook_node(nb)
    alts = iter(figure_descriptions(nb))
    body = re.sub(
        re.escape(f'alt="{NO_ALT}"'),
        lambda m: f'alt="{html_lib.escape(next(alts, "figure"), quote=True)}"',
        body,
    )
    dest = html_dir / (Path(executed).stem + ".html")
    dest.write_text(body, encoding="utf-8")
    return dest


def render_notebooks(
    notebook_dir, out_dir, smoke: bool = False, names=NOTEBOOKS, report=None
) -> dict[str, Path]:
    """Execute every notebook of ``notebook_dir`` (headless: the demo shows its static figure)
    and write ``out_dir/<name>.ipynb``, ``out_dir/html/<name>.html`` and
    ``out_dir/results/*.json``.
    ``report`` (e.g. print) gets one line per notebook: its name, time and page.
    Returns {name: html path}."""
    out_dir = Path(out_dir)
    pages = {}
    for name in names:
        params = {"SMOKE": smoke}
        if name.startswith("06"):
            params["INTERACTIVE"] = False
        start = time.perf_counter()
        executed = execute_notebook(notebook_dir, name, out_dir, params, agg=False)
        pages[name] = to_html(executed, out_dir / "html")
        if report:
            report(f"{name}: {time.perf_counter() - start:.0f} s, {pages[name]}")
    return pages
