"""updetr-lite bench: every measurement is there and positive (no timing thresholds)."""

import json

import pytest
import torch

from updetr_lite.bench import cpu_model
from updetr_lite.cli import main
from updetr_lite.fastpath import bf16_supported


def test_bench_smoke_json(tmp_path, capsys):
    code = main(["bench", "--preset", "smoke", "--device", "cpu", "--json", "--batch", "2",
                 "--steps", "1", "--warmup", "1", "--set", f"data.cache_dir={tmp_path}"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    assert r["preset"] == "smoke" and r["device"] == "cpu" and r["batch"] == 2
    assert r["hardware"]["cpu"] == cpu_model() and r["hardware"]["cpu"]
    assert r["hardware"]["torch_threads"] >= 1 and r["hardware"]["gpu"] is None
    assert r["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert r["hardware"]["fast_bf16"] == bf16_supported("cpu")
    for section, key in [
        ("pretext", "s_per_image"),
        ("pretext", "images_per_s"),
        ("pretext", "peak_memory_mib"),
        ("finetune", "images_per_s"),
        ("finetune", "peak_memory_mib"),
        ("data", "samples_per_s_per_worker"),
        ("matcher", "ms_per_image"),
    ]:
        value = r[section][key]
        assert isinstance(value, float) and value > 0, (section, key, value)
    # images/s is the inverse of seconds per image
    assert (
        r["pretext"]["images_per_s"] * r["pretext"]["s_per_image"] == 1.0
        or abs(r["pretext"]["images_per_s"] * r["pretext"]["s_per_image"] - 1) < 1e-9
    )
    paths = r["data"]["paths"]  # a figure per patch pipeline; smoke's configured: worker
    assert r["data"]["pipeline"] == "worker"
    assert r["data"]["samples_per_s_per_worker"] == paths["worker"]["samples_per_s_per_worker"]
    assert paths["device"]["samples_per_s_per_worker"] > 0
    assert paths["device"]["device_ms_per_sample"] > 0
    assert r["pretext"]["image_size"] == [64, 64]  # smoke: pretext_scales (64,), max 64
    assert r["matcher"]["queries"] == 8 and r["matcher"]["targets"] == 2
    assert r["peak_memory_mib"] == max(
        r["pretext"]["peak_memory_mib"], r["finetune"]["peak_memory_mib"]
    )


def test_cpu_model_from_proc_cpuinfo():
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system (not Linux)")
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
    if names:
        assert cpu_model() == names[0]


def test_bench_bad_steps_one_line(capsys):
    code = main(["bench", "--preset", "smoke", "--steps", "0", "--no-data"])
    err = capsys.readouterr().err
    # a usage error (exit 2), refused by the parser before any model is built
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("updetr-lite: error: argument --steps: must be an integer >= 1")


def test_bench_data_on_made_jpegs_compares_decoders(tmp_path, capsys):
    code = main(["bench", "--preset", "smoke", "--device", "cpu", "--json", "--batch", "2",
                 "--steps", "1", "--warmup", "0", "--repeats", "1", "--no-finetune",
                 "--jpegs", "3", "--set", f"data.cache_dir={tmp_path}"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out)["data"]
    assert len(list((tmp_path / "bench_jpegs_3").glob("*.jpg"))) == 3
    assert "3 photo-like 500x375 JPEGs" in d["source"]
    assert d["decode_images_per_s"]["pil"] > 0 and d["decode_images_per_s"]["decode_jpeg"] > 0
