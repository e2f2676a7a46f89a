"""scripts/device_check.sh runs end to end on the CPU at tiny sizes (the GPU check's code)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from updetr_lite.fastpath import bf16_supported

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_tiny_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), OMP_NUM_THREADS="1")
    cmd = ["bash", str(ROOT / "scripts" / "device_check.sh"), "--tiny", "--device", "cpu"]
    cmd += ["--images", "8", "--folder", str(tmp_path / "jpegs"), "--batch", "2"]
    cmd += ["--workers", "1", "--steps", "1", "--worker-steps", "1", "--warmup", "1"]
    cmd += ["--compile-backend", "eager"]  # the compile code path without a C++ toolchain
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(list((tmp_path / "jpegs").rglob("*.jpg"))) == 8
    results = [
        json.loads(line) for line in (tmp_path / "device_check.json").read_text().splitlines()
    ]
    assert [(r["pipeline"], r["compile"]) for r in results] == [
        ("device", None),
        ("worker", None),
        ("device", "eager"),
    ]
    # amp is asked for; it is on only where bf16 is fast (a CPU with AVX2 only falls back)
    fast_bf16 = bf16_supported("cpu")
    for r in results:
        assert r["images_per_s"] > 0 and 0 <= r["data_wait_share"] < 1
        assert r["peak_memory_mib"] > 0 and r["final_loss"] > 0 and r["amp_bf16"] is fast_bf16
    # the same seed and parameters: both pipelines' last losses agree within 1 %
    assert (
        abs(results[0]["final_loss"] - results[1]["final_loss"]) < 0.01 * results[1]["final_loss"]
    )
    assert "torchrun 2-process run skipped: 0 GPU(s)" in out.stdout
    assert "torch.compile of the transformer: x" in out.stdout


def test_pycocotools_stand_in_where_missing(monkeypatch, capsys):
    """A CUDA image without pycocotools can still import the engine and pre-train."""
    from updetr_lite import device_check

    for name in ("pycocotools", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    device_check._stub_pycocotools()
    assert "pycocotools missing" in capsys.readouterr().out
    from pycocotools.cocoeval import COCOeval

    try:
        COCOeval()
    except ImportError as e:
        assert "stand-in" in str(e)
    else:
        raise AssertionError("the stand-in must refuse to compute AP")
