"""lib.bench: the quick CPU run writes the documented JSON with positive numbers; bad options exit 2."""
import json

import pytest

from lib import bench
from lib.common import run_cli


@pytest.mark.bench
def test_quick_cpu_bench_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--device", "cpu", "--json", str(out), "--models", "light_resnet18"]) == 0
    r = json.loads(out.read_text())
    assert r["device_type"] == "cpu" and r["device"].startswith("cpu") and r["quick"] is True
    assert r["augment"] == "full" and r["mix_prob"] == 0.5  # the report's augmentation set, both pipelines
    d = r["data_pipeline"]
    assert d["per_sample_img_s"] > 0 and d["batched_img_s"] > 0 and d["per_sample_workers"] == 0
    assert abs(d["ratio"] - d["batched_img_s"] / d["per_sample_img_s"]) < 1e-9
    for key in ("train_step_img_s", "train_step_plain_img_s", "train_step_ratio", "inference_img_s",
                "data_loading_share"):
        assert set(r[key]) == {"light_resnet18"} and r[key]["light_resnet18"] > 0, key
    assert 0 < r["data_loading_share"]["light_resnet18"] < 1
    fed = r["train_step_with_loader_img_s"]["light_resnet18"]
    assert fed > 0 and abs(r["epoch_seconds_50k"]["light_resnet18"] * fed - 50_000) < 1e-6 * 50_000
    assert 0 <= r["data_share_measured"]["light_resnet18"] < 1
    assert d["batched_per_batch_img_s"] > 0 and d["chunk_images"] == 512  # the CPU's chunks, and one per batch
    s = r["train_step_settings"]
    assert s["amp_dtype"] is None and s["compile"] is False  # CPU: fp32, eager
    assert s["plain_fp32_tf32"] is None  # no TF32 on a CPU
    # the solo epoch: a real lib.train run (QUICK: 100 training, 50 validation images of synthetic data)
    solo = r["solo_epoch"]["light_resnet18"]
    assert solo["train_images"] == 100 and solo["val_images"] == 50 and solo["data"] == "synthetic"
    assert 0 < solo["epoch_s"] < solo["run_s"] and solo["first_epoch_s"] > 0
    ops = r["ops"]  # counted, not timed: independent of the machine's load
    assert ops["loader_counted_on"] == "meta" and ops["batch_size"] == 128
    assert ops["model_step"]["light_resnet18"] > 300  # 20 weight layers: forward, backward, BN, optimizer
    for counts in ops["loader_per_step"].values():
        assert counts["chunked"]["chunk_images"] == 16_384 and counts["chunked"]["steps"] == 256
        assert counts["chunked"]["per_step"] < 0.1 * counts["per_batch"]["per_step"]
    assert r["peak_memory_mb"] > 0
    printed = capsys.readouterr().out
    assert "per-sample" in printed and "light_resnet18" in printed and "solo epoch" in printed


def test_bad_options_exit_2(capsys, tmp_path):
    assert run_cli(bench.main, ["--device", "cpu", "--models", "resnet9000"]) == 2
    assert "resnet9000" in capsys.readouterr().err
    assert run_cli(bench.main, ["--device", "cpu", "--data-dir", str(tmp_path / "none")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err
