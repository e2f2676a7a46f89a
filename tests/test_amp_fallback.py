"""bf16 autocast only where it is fast: on a CPU without AVX-512 BF16 / AMX, amp falls back
to fp32 with one printed line (the capability is monkeypatched away here)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from updetr_lite import fastpath
from updetr_lite.config import get_config
from updetr_lite.engine.train import train


@pytest.fixture
def avx2_only(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)


def test_amp_refused_without_bf16_one_line(avx2_only, capsys):
    assert fastpath.amp_enabled(True, "cpu", "pretrain.amp") is False
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "pretrain.amp=True ignored" in lines[0] and "fp32" in lines[0]
    assert fastpath.amp_enabled(False, "cpu") is False and capsys.readouterr().out == ""


def test_amp_kept_with_bf16(monkeypatch, capsys):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert fastpath.amp_enabled(True, "cpu", "pretrain.amp") is True
    assert capsys.readouterr().out == ""


def _losses(tmp_path, name, amp):
    cfg = get_config(
        "smoke",
        [
            f"data.cache_dir={str(tmp_path / 'cache')!r}",
            f"pretrain.amp={amp}",
            "pretrain.max_steps=2",
            "pretrain.log_every=1",
        ],
    )
    train(cfg, "pretrain", tmp_path / name, progress=False)
    lines = (tmp_path / name / "log.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


def test_pretraining_with_amp_on_avx2_cpu_runs_fp32(avx2_only, tmp_path, capsys):
    fp32 = _losses(tmp_path, "fp32", False)
    assert "ignored" not in capsys.readouterr().out
    fallback = _losses(tmp_path, "amp", True)
    assert "pretrain.amp=True ignored" in capsys.readouterr().out
    assert fallback == fp32  # exactly the fp32 run: autocast never switched on


def test_kernels_capped_at_avx2_mean_no_bf16():
    """A CPU with AVX-512 BF16 whose torch is capped at AVX2 (as the lite runs were rerun, to
    stand in for a CPU without AVX-512) runs bf16 as slowly as such a CPU: amp must fall back."""
    code = (
        "import torch; from updetr_lite import fastpath; "
        "print(torch.backends.cpu.get_cpu_capability(), fastpath.bf16_supported('cpu'))"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AVX2", "False"]
