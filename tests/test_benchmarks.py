"""The benchmark scripts run from a checkout and write consistent JSON (tiny settings, CPU).

The figures themselves are measured by hand (benchmarks/RESULTS.md); these tests keep the
scripts working and check the arithmetic of what they report.
"""

import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import HANG_S, ROOT, cli_env, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # the benchmark scripts: .ci/run runs them after the default suite


def _run(args, tmp_path, **env):
    out = subprocess.run(args, cwd=ROOT, env=cli_env(OMP_NUM_THREADS="2", **env), capture_output=True, text=True,
                         timeout=HANG_S)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def test_gpu_script_smoke_runs_every_measurement_and_summarises(tmp_path):
    out = _run(["bash", "benchmarks/gpu.sh", str(tmp_path / "no-data"), str(tmp_path / "gpu")], tmp_path, SMOKE="1",
               PYTHON=sys.executable, SEEDS="2", PACK=str(tmp_path / "gpu.tar.gz"))
    s = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    names = ["main_s1", "main_s2", "main_fp16", "fast_s1", "fast_s2", "fast_fp16", "airbench94", "airbench95",
             "notebook", "throughput"]
    assert [line.split(" rc=")[0] for line in s["steps"]] == names, s["steps"]
    assert [line.split(" rc=")[1].split()[0] for line in s["steps"]] == ["0"] * len(names), s["steps"]
    for group, epochs in (("main", 1), ("fast", 2)):
        runs = s[group]["runs"]
        assert sorted(runs) == ["1", "2"] and all(r["epochs"] == epochs for r in runs.values())
        for seed, r in runs.items():  # copied from each run's metrics.json
            m = read_metrics(tmp_path / "gpu" / f"{group}_s{seed}")
            assert r["test_acc"] == m["test_acc"] and r["train_tflops_per_s"] == m["train_tflops_per_s"]
        mean = sum(r["test_acc_tta"] for r in runs.values()) / 2
        assert s[group]["mean_test_acc_tta"] == pytest.approx(mean, abs=6e-5)  # rounded to 4 decimals
        assert s[group]["fp16"]["precision"].startswith("fp16")
        gap = s[group]["fp16"]["test_acc_tta"] - runs["1"]["test_acc_tta"] if s[group]["fp16"]["test_acc_tta"] else None
        assert s[group]["fp16_minus_seed1_tta"] == (pytest.approx(gap, abs=0.006) if gap is not None else None)
    assert (tmp_path / "gpu" / "main_s1" / "images" / "gradcam.png").is_file()      # seed 1: the pictures
    assert not (tmp_path / "gpu" / "main_s2" / "images" / "gradcam.png").exists()
    assert s["airbench94"] == {"skipped": "airbench needs CUDA"} == s["airbench95"]
    assert s["notebook"]["epochs"] == 1 and (tmp_path / "gpu" / "S7_gpu.ipynb").exists()
    assert s["throughput"]["step_ratio_ours_vs_classic"]["fastnet"]
    assert "main job, mean of 2 seeds" in out.stdout and "airbench94: skipped" in out.stdout
    with tarfile.open(tmp_path / "gpu.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu/summary.json" in names and "gpu/main_s1/metrics.json" in names
    assert not [n for n in names if n.endswith(".pt")]


def test_gpu_script_refuses_a_missing_data_folder_or_bad_seeds_with_one_line_and_writes_nothing(tmp_path):
    out = subprocess.run(["bash", "benchmarks/gpu.sh", str(tmp_path / "no-data"), str(tmp_path / "gpu")], cwd=ROOT,
                         env=cli_env(), capture_output=True, text=True, timeout=HANG_S)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "is not a folder" in out.stderr and "CIFAR-10 JPEG copy" in out.stderr
    assert not (tmp_path / "gpu").exists()
    for bad in ("0", "three", "100"):
        out = subprocess.run(["bash", "benchmarks/gpu.sh", str(tmp_path), str(tmp_path / "gpu")], cwd=ROOT,
                             env=cli_env(SEEDS=bad), capture_output=True, text=True, timeout=HANG_S)
        assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
        assert "SEEDS" in out.stderr and not (tmp_path / "gpu").exists()


def test_gpu_script_skips_what_the_budget_cannot_hold_or_only_leaves_out(tmp_path):
    _run(["bash", "benchmarks/gpu.sh", str(tmp_path / "no-data"), str(tmp_path / "gpu")], tmp_path, SMOKE="1",
         PYTHON=sys.executable, BUDGET_S="1", SEEDS="1")
    s = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    assert s["steps"] == [f"{n} skipped" for n in ("main_s1", "main_fp16", "fast_s1", "fast_fp16", "airbench94",
                                                   "airbench95", "notebook", "throughput")]
    assert "main" not in s and "fast" not in s
    _run(["bash", "benchmarks/gpu.sh", str(tmp_path / "no-data"), str(tmp_path / "only")], tmp_path, SMOKE="1",
         PYTHON=sys.executable, ONLY="fast_s1 airbench94", SEEDS="1")
    s = json.loads((tmp_path / "only" / "summary.json").read_text())
    assert [line.split()[0] for line in s["steps"]] == ["fast_s1", "airbench94"] and s["fast"]["runs"]["1"]["epochs"] == 2


def test_the_airbench_runner_writes_skipped_without_cuda(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/run_airbench.py", str(tmp_path), "--out", str(tmp_path / "a.json")],
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=HANG_S)
    assert out.returncode == 0 and json.loads((tmp_path / "a.json").read_text())["skipped"]  # no CUDA here


def test_time_to_accuracy_measures_both_recipes_at_every_mark(tmp_path):
    path = tmp_path / "tta.json"
    _run([sys.executable, "benchmarks/bench_time_to_accuracy.py", "--synthetic", "512", "--marks", "0.01,0.02",
          "--epochs", "1", "--device", "cpu", "--out", str(path)], tmp_path)
    r = json.loads(path.read_text())
    assert r["data"].startswith("random") and r["marks_minutes"] == [0.01, 0.02]
    assert [m["minutes"] for m in r["ours"]["marks"]] == pytest.approx([0.01, 0.02], abs=0.01)
    seen = [m["images_seen"] for m in r["original"]["marks"]]
    assert len(seen) == 2 and seen[0] <= seen[1] and all(s % 128 == 0 and s > 0 for s in seen)
    for m in r["ours"]["marks"] + r["original"]["marks"]:
        assert 0 <= m["test_acc"] <= 100


def test_scaling_projects_epoch_time_from_the_measured_rate(tmp_path):
    path = tmp_path / "scaling.json"
    _run([sys.executable, "benchmarks/bench_scaling.py", "--device", "cpu", "--sizes", "256", "--sides", "32",
          "--batch", "32", "--steps", "2", "--batch-sizes", "32", "--images-per-batch-test", "64", "--out",
          str(path)], tmp_path)
    r = json.loads(path.read_text())
    (size,), (batch,) = r["by_size"], r["by_batch"]
    assert (size["images"], size["side"], size["data_mb"]) == (256, 32, round(256 * 32 * 32 * 3 / 2**20, 1))
    assert size["epoch_s_projected"] == pytest.approx(256 / size["images_per_s"], rel=0.02, abs=0.1)
    assert batch["batch"] == 32 and batch["peak_mem_mb"] > 0


def test_long_run_memory_records_every_epoch(tmp_path):
    path = tmp_path / "mem.json"
    _run([sys.executable, "benchmarks/long_run_memory.py", "--epochs", "10", "--train", "64", "--test", "16",
          "--out", str(path)], tmp_path)
    r = json.loads(path.read_text())
    assert sorted(int(k) for k in r["per_epoch"]) == list(range(1, 11))
    assert r["peak_rss_mb_at_epoch_10"] >= max(v[0] for v in r["per_epoch"].values()) - 1


def test_tta_schemes_match_the_package_and_shift_the_right_way():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_tta
    import torch
    from eva8_utils.engine import tta_logits

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 5)).eval()
    x = torch.randn(6, 3, 8, 8)
    sch = bench_tta.schemes(2)
    for name, weights in sch.items():
        assert sum(weights.values()) == pytest.approx(1.0), name
    assert (len(sch["flip_shift8"]), len(sch["flip_grid3"]), len(sch["flip_grid5"])) == (18, 18, 50)
    logits = bench_tta.view_logits(model, x, 2, batch=4, amp=False)
    assert len(logits) == 50 and logits[(0, 0, False)].shape == (6, 5)
    with torch.no_grad():
        for mode in ("none", "flip", "flip_translate"):
            ours = bench_tta.combine(logits, sch[mode])
            assert torch.allclose(ours, tta_logits(model, x, mode), atol=1e-5), mode
    # a view shifted by (dy, dx) shows image(i + dy, j + dx) inside the image
    views = dict(bench_tta.views(x, 2))
    assert torch.equal(views[(1, -2, False)][..., 2:6, 2:6], x[..., 3:7, 0:4])
    assert torch.equal(views[(0, 1, True)], views[(0, 1, False)].flip(-1))


def test_tta_benchmark_refuses_a_folder_without_a_checkpoint(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/bench_tta.py", "--data-dir", str(tmp_path), str(tmp_path)],
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=HANG_S)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"error: {tmp_path} has no checkpoints/last.pt; give run folders of "
                                               f"finished runs"]


def test_loader_benchmark_times_each_kind_of_epoch_of_each_recipe(tmp_path):
    path = tmp_path / "loader.json"
    _run([sys.executable, "benchmarks/bench_loader.py", "--synthetic", "600", "--recipes", "fast_sgd,fast",
          "--repeats", "2", "--device", "cpu", "--out", str(path)], tmp_path)
    r = json.loads(path.read_text())
    assert r["data"].startswith("random") and r["repeats"] == 2
    sgd, fast = r["recipes"]["fast_sgd"], r["recipes"]["fast"]
    assert set(sgd) == {"full_size"} and set(fast) == {"full_size", "low_res"}
    assert sgd["full_size"]["batches"] == 2 and sgd["full_size"]["batch_shape"] == [88, 3, 32, 32]  # 512 + 88
    # fast's batch (2000) is cut to the 600 images: one batch
    assert fast["full_size"]["batches"] == 1 and fast["full_size"]["batch_shape"] == [600, 3, 32, 32]
    assert fast["low_res"]["batch_shape"] == [600, 3, 26, 26]
    for e in (sgd["full_size"], fast["full_size"], fast["low_res"]):
        assert len(e["all_seconds"]) == 2 and e["seconds"] == pytest.approx(sum(e["all_seconds"]) / 2, abs=1e-3)
    bad = subprocess.run([sys.executable, "benchmarks/bench_loader.py", "--recipes", "turbo", "--synthetic", "64"],
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=HANG_S)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --recipes takes names from resnet18, fast, fast_sgd")


def test_subset_screening_trains_later_epochs_on_the_highest_loss_images(tmp_path):
    """benchmarks/screen_subsets.py: fewer steps in the subset epochs, a schedule that still ends at 0,
    and the subset made of the images with the highest loss last seen."""
    import csv

    import torch
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import screen_subsets as S
    from eva8_utils.augment import AugmentConfig
    from eva8_utils.data import DeviceLoader

    run = tmp_path / "run"
    _run([sys.executable, "benchmarks/screen_subsets.py", "--subset-from", "2", "--subset-fraction", "0.5", "--",
          "--recipe", "fast", "--dataset", "shapes", "--shapes-train", "400", "--shapes-test", "40", "--batch-size",
          "100", "--epochs", "3", "--low-res-epochs", "1", "--tta", "none", "--no-analysis", "--out", str(run)],
         tmp_path)
    rows = list(csv.DictReader((run / "steps.csv").open()))
    assert [sum(r["epoch"] == str(e) for r in rows) for e in (1, 2, 3)] == [4, 2, 2]
    lrs = [float(r["lr"]) for r in rows]  # linear decay over the 8 real steps: 0.24 * (1 - k/8)
    assert lrs == pytest.approx([0.24 * (1 - k / 8) for k in range(8)], rel=1e-6)

    # in-process, without patching: which images a subset epoch takes, and the loss it keeps
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 8, 8, 3), dtype=torch.uint8, generator=g)
    loader = DeviceLoader(images, torch.arange(50) % 10, batch_size=10, mean=(0.5,) * 3, std=(0.25,) * 3, train=True,
                          aug=AugmentConfig(crop_padding=1, pad_mode="reflect", flip="alternate"), seed=3)
    loss = torch.rand(50, generator=g)
    S.STATE["loss"] = loss.clone()
    S.OPTS.subset_from, S.OPTS.subset_fraction = 2, 0.4
    try:
        loader.set_epoch(2)
        for select, want in (("loss", set(torch.topk(loss, 20).indices.tolist())), ("random", None)):
            S.OPTS.select = select
            perm, params = S._epoch_order(loader)
            assert len(perm) == 20 and len(set(perm.tolist())) == 20 and len(params["crop_y"]) == 20
            assert set(perm.tolist()) == want if want else set(perm.tolist()) != set(torch.topk(loss, 20).indices.tolist())
            assert S._plan(loader) == [(0, 10), (10, 20)]
        class Patched(DeviceLoader):
            _plan, epoch_order, iterate = S._plan, S._epoch_order, S._iterate
        patched = Patched(images, torch.arange(50) % 10, batch_size=10, mean=(0.5,) * 3, std=(0.25,) * 3, train=True,
                          aug=AugmentConfig(crop_padding=1, pad_mode="reflect", flip="alternate"), seed=3)
        for epoch in (1, 2):  # each batch's noted images are the ones it holds
            patched.set_epoch(epoch)
            seen = [(y.clone(), S.STATE["idx"].clone()) for _, y in patched]
            assert sum(len(i) for _, i in seen) == (50 if epoch == 1 else 20)
            assert all(torch.equal(y, i % 10) for y, i in seen) and len({int(j) for _, i in seen for j in i}) == sum(
                len(i) for _, i in seen)
        loader.set_epoch(1)  # before --subset-from: every image
        assert len(S._epoch_order(loader)[0]) == 50 and S._plan(loader) == [(s, s + 10) for s in range(0, 50, 10)]
        out, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
        S.STATE["idx"] = torch.tensor([7, 8, 9, 10])
        with torch.enable_grad():
            mean = S._cross_entropy(out, y, label_smoothing=0.2)
        per = torch.nn.functional.cross_entropy(out, y, label_smoothing=0.2, reduction="none")
        assert float(mean) == pytest.approx(float(per.mean())) and torch.equal(S.STATE["loss"][7:11], per)
    finally:
        S.OPTS.subset_from, S.OPTS.subset_fraction, S.OPTS.select = 0, 1.0, "loss"
        S.STATE.update(loss=None, idx=None)
    bad = subprocess.run([sys.executable, "benchmarks/screen_subsets.py", "--subset-from", "1", "--", "--recipe",
                          "fast"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=HANG_S)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.strip().splitlines() == [
        "error: --subset-from must be 0 (off) or >= 2 (epoch 1 trains on every image), with --subset-fraction in (0, 1)"]


def test_resnet18_comparison_summarises_its_runs_and_stops_on_a_bad_setting_with_the_runs_error(tmp_path):
    _run([sys.executable, "benchmarks/bench_resnet18_subset.py", "--smoke", "--only", "recipe", "adam",
          "--out-dir", str(tmp_path / "ok")], tmp_path)
    r = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert list(r["runs"]) == ["recipe", "adam"] and r["epochs"] == 1
    for name, run in r["runs"].items():
        assert run["test_acc"] == read_metrics(tmp_path / "ok" / name)["test_acc"]
    out = subprocess.run([sys.executable, "benchmarks/bench_resnet18_subset.py", "--smoke", "--subset", "-5",
                          "--out-dir", str(tmp_path / "bad")], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                         timeout=HANG_S)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "error: --train-subset must be >= 0 (0 = all), got -5"
    assert not (tmp_path / "bad" / "summary.json").exists()
