"""rundir.py's promises. On hand-made folders (no training): the notebook's rules for a RUN_DIR
(never replace a run silently), the history read back as written, the pictures and the report
written or warned about, the README copy, TensorBoard's hyperparameters. On a tiny assembled
experiment: a checkpoint restores every state it holds (weights, optimizer, schedule, scaler,
lookahead, EMA, divergence monitor), prev.pt when last.pt is missing, a resume past lookahead's
start equal to the uninterrupted run, start/finish/fail writing what metrics.json promises.
(Kills, interrupts and failed writes during real runs: test_faults.py, test_write_faults.py.)"""

import json
import re
import time

import pytest
import torch
import yaml

from eva8_utils.config import build_config
from eva8_utils.engine import new_history
from eva8_utils.engine.loop import add_epoch
from eva8_utils.errors import CheckpointError, ConfigError
from eva8_utils.rundir import RunDir, SaveRun, default_run_dir


def _cfg(**flags):
    return build_config(flags={"dataset": "shapes", "model": "fastnet", "epochs": 3, "progress": False, **flags})


def _run_folder(path, status="done", checkpoint=True, cfg=None, config=True):
    """A run folder as a run leaves it: config.yaml, metrics.json, history.csv, a checkpoint."""
    path.mkdir(parents=True)
    if config:
        (path / "config.yaml").write_text(yaml.safe_dump((cfg or _cfg()).to_dict()))
    (path / "metrics.json").write_text(json.dumps({"status": status, "epochs": 1}))
    (path / "history.csv").write_text("epoch,train_loss,train_acc,test_loss,test_acc,lr\n1,1.0,50.0,1.1,40.0,0.1\n")
    if checkpoint:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "last.pt").write_bytes(b"x")
    return RunDir(path)


def test_an_empty_or_new_folder_is_a_new_run_in_that_folder(tmp_path):
    run = RunDir(tmp_path / "new")
    cfg = run.open_for(_cfg(resume=True, out=str(tmp_path / "elsewhere")), overwrite=False)
    assert run.mode == "new run" and cfg.out == str(tmp_path / "new") and not cfg.resume and not cfg.overwrite
    assert not run.resuming and repr(run) == f"RunDir({str(tmp_path / 'new')!r}, status='empty')"
    again = RunDir(tmp_path / "new2")
    assert not again.open_for(_cfg(), overwrite=True).overwrite and again.mode == "new run"  # nothing to start over


def test_a_file_or_a_folder_of_other_files_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunDir(tmp_path / "f").open_for(_cfg())
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (mine / name).write_text("keep")
    with pytest.raises(ConfigError, match=r"holds other files \(a.txt, b.txt, c.txt, ...\) and no run"):
        RunDir(mine).open_for(_cfg())
    cfg = RunDir(mine).open_for(_cfg(), overwrite=True)
    assert not cfg.overwrite and not cfg.resume  # no run to replace: nothing of theirs is removed
    with pytest.raises(ConfigError, match="is a file, not a folder"):  # a folder that cannot be made
        RunDir(tmp_path / "f" / "run").open_for(_cfg())


def test_overwrite_replaces_a_run_and_says_so(tmp_path):
    run = _run_folder(tmp_path / "r")
    cfg = run.open_for(_cfg(epochs=5), overwrite=True)
    assert cfg.overwrite and not cfg.resume and run.mode == "starting over (OVERWRITE)"


def test_a_run_with_other_settings_or_without_its_config_is_refused(tmp_path):
    run = _run_folder(tmp_path / "r")
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(lr .* there vs .* here"):
        run.open_for(_cfg(lr=0.123))
    bare = _run_folder(tmp_path / "bare", config=False)
    with pytest.raises(ConfigError, match="no config.yaml"):
        bare.open_for(_cfg())


def test_an_unfinished_run_resumes_with_its_saved_config_and_a_finished_one_is_shown(tmp_path):
    saved = _cfg(lr=0.05, overwrite=True)  # the run was started with --overwrite: a resume must not wipe it
    run = _run_folder(tmp_path / "r", status="running", cfg=saved)
    cfg = run.open_for(_cfg(lr=0.05, progress=True, log_every=7))
    assert run.resuming and run.mode == "resuming" and cfg.resume and not cfg.overwrite
    assert cfg.out == str(tmp_path / "r")
    assert cfg.lr == 0.05 and cfg.progress is True and cfg.log_every == 7  # run-control settings are this call's
    done = _run_folder(tmp_path / "d", status="done", cfg=saved)
    cfg = done.open_for(_cfg(lr=0.05))
    assert done.mode == "finished: showing it" and not done.resuming and not cfg.resume and done.finished


def test_an_unfinished_run_without_a_checkpoint_starts_its_config_again(tmp_path):
    run = _run_folder(tmp_path / "r", status="running", checkpoint=False)
    cfg = run.open_for(_cfg(resume=True, out=str(tmp_path / "elsewhere")))
    assert cfg.overwrite and not cfg.resume and not run.resuming and run.mode.startswith("starting its config")
    assert cfg.out == str(tmp_path / "r")


def test_the_history_reads_back_as_it_was_written(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    h = new_history()
    for e in (1, 2):
        add_epoch(h, e, {"train_loss": 1.5 / e, "train_acc": 40.0 * e, "test_loss": 1.25 / e, "test_acc": 45.5 * e,
                         "lrs": [0.1 / e, 0.05 / e], "step_losses": [2.25 / e, 2.0 / e]})
    assert h["steps"][2] == [3, 2, 0.05, 1.125]
    run.write_history(h)
    back = run.read_history()
    for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert back[key] == pytest.approx(h[key]), key
    assert back["steps"] == h["steps"] and isinstance(back["steps"][0][0], int)
    assert run.metrics["epochs"] == 2 and run.metrics["best_test_acc"] == pytest.approx(91.0)


def test_pictures_and_the_report_are_written_and_copied_and_a_failed_one_is_a_warning(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from PIL import Image

    run = _run_folder(tmp_path / "r")
    fig = plt.figure(figsize=(4, 3))
    path = run.save_figure("curves", fig)
    assert path == run.path / "images" / "curves.png" and Image.open(path).size == (440, 330)  # 110 dpi
    for _ in range(2):  # a nested folder, made once, then written into again
        run.copy_images(tmp_path / "image" / "README")
    assert (tmp_path / "image" / "README" / "curves.png").read_bytes() == path.read_bytes()
    shown = []

    class Writer:
        def add_figure(self, tag, figure, close):
            shown.append((tag, figure, close))

    run.tensorboard_enabled, run._writer = True, Writer()
    run.save_figure("gradcam", fig)
    assert shown == [("images/gradcam", fig, False)]  # the figure stays open for the caller
    run.tensorboard_enabled, run._writer = False, None
    run.metrics.update(test_acc=91.5, status="done")
    run.write_report(_cfg(), ["a", "b"])
    assert "91.5" in (run.path / "report.md").read_text()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("eva8_utils.rundir.atomic_write_text", full)
    monkeypatch.setattr("eva8_utils.rundir.atomic_write", full)
    run.save_figure("confusion_matrix", fig)
    run.write_report(_cfg(), ["a", "b"])
    plt.close(fig)
    warnings = run.metrics["warnings"]
    assert len(warnings) == 2 and "images/confusion_matrix.png could not be written" in warnings[0]
    assert "report.md could not be written" in warnings[1] and f"eva8 analyse --out {run.path}" in warnings[1]
    assert not (run.path / "images" / "confusion_matrix.png").exists()


def test_a_training_warning_goes_into_metrics_json_at_once(tmp_path):
    class Exp:
        class cfg:
            checkpoint_minutes = 0.0
        history = None

    run = _run_folder(tmp_path / "r", status="running")
    SaveRun(run, Exp()).on_warning(None, "loss spiked in epoch 2")
    m = json.loads((run.path / "metrics.json").read_text())
    assert m["warnings"] == ["loss spiked in epoch 2"] and m["status"] == "running"


def test_the_default_run_folder_is_under_runs_named_by_time_and_model():
    before = time.strftime("%Y%m%d-%H%M%S")
    p = default_run_dir("mymodels:Net/v2")
    assert p.parent.name == "runs" and re.fullmatch(r"\d{8}-\d{6}-mymodels\.Net\.v2", p.name)
    assert p.name[:15] >= before


def test_tensorboard_gets_the_runs_hyperparameters_and_final_numbers(tmp_path):
    pytest.importorskip("tensorboard")
    run = _run_folder(tmp_path / "r", cfg=_cfg(lr=0.05))
    run.enable_tensorboard()
    calls = []

    class Writer:
        def add_hparams(self, hparams, metrics, run_name):
            calls.append((hparams, metrics, run_name))

    run._writer = Writer()
    run._tb_hparams({"test_acc": 91.25, "test_loss": 0.3, "test_acc_tta": 91.5, "best_test_acc": 92, "other": 1})
    (hparams, metrics, name), = calls
    assert hparams["lr"] == 0.05 and hparams["model"] == "fastnet" and name == "."
    assert metrics == {"hparam/test_acc": 91.25, "hparam/test_loss": 0.3, "hparam/test_acc_tta": 91.5,
                       "hparam/best_test_acc": 92.0}
    assert run.tensorboard is run._writer


def test_the_tensorboard_writer_writes_into_the_runs_folder(tmp_path):
    pytest.importorskip("tensorboard")
    from eva8_utils.rundir import make_summary_writer

    assert make_summary_writer(None) is None  # only checks that TensorBoard is there
    writer = make_summary_writer(tmp_path / "tb")
    writer.add_scalar("x", 1.0, 1)
    writer.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_clear_removes_a_runs_files_and_folders_and_nothing_else(tmp_path):
    run = _run_folder(tmp_path / "r")
    (run.path / "images").mkdir()
    (run.path / "images" / "curves.png").write_bytes(b"png")
    (run.path / "notes.txt").write_text("mine")
    run.clear()
    assert sorted(p.name for p in run.path.iterdir()) == ["notes.txt"]


def test_the_readme_copy_goes_to_image_readme_by_default_and_the_reports_notes_are_kept(tmp_path, monkeypatch):
    run = _run_folder(tmp_path / "r")
    (run.path / "images").mkdir()
    (run.path / "images" / "curves.png").write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    run.copy_images()
    assert (tmp_path / "image" / "README" / "curves.png").read_bytes() == b"png"
    run.metrics.update(test_acc=90.0, status="done")
    run.write_report(_cfg(), ["a", "b"], notes=["The pictures use the EMA weights."])
    assert "The pictures use the EMA weights." in (run.path / "report.md").read_text()


# ------------------------------------------------------------------ saving and restoring a built experiment
def _built(tmp_path, name="r", **flags):
    """A tiny assembled experiment (shapes, fastnet; 4 steps an epoch) and its RunDir."""
    from eva8_utils.experiment import build

    cfg = _cfg(shapes_train=64, shapes_test=16, batch_size=16, tta="none", analysis=False,
               out=str(tmp_path / name), **flags)
    return build(cfg), RunDir(tmp_path / name)


def _same_tensors(a, b):
    """Two (nested) states hold equal tensors and equal plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def _moved(exp, shift):
    """Give the lookahead, the monitor, the EMA and the weights states of their own."""
    exp.lookahead.slow = {k: v.detach().clone() + shift for k, v in exp.model.state_dict().items()
                          if v.is_floating_point()}
    exp.monitor.start, exp.monitor.smooth, exp.monitor.above = 2.5, 3.0 + shift, 2
    with torch.no_grad():
        for p in exp.model.parameters():
            p.add_(shift)
    exp.ema.update_parameters(exp.model)
    exp.schedule.after_batch()
    exp.history_so_far()


def test_restore_brings_back_every_state_the_last_checkpoint_holds(tmp_path, caplog):
    exp, run = _built(tmp_path, lookahead=True, ema=0.9)
    _moved(exp, 0.25)
    run.path.mkdir()
    run.save_state(exp, 2)
    again, run2 = _built(tmp_path, lookahead=True, ema=0.9)
    with caplog.at_level("WARNING", logger="eva8_utils"):
        run2.restore(again)
    assert not [r for r in caplog.records if "previous checkpoint" in r.getMessage()]  # last.pt was used
    assert again.start_epoch == 2 and again.resumed_from == run.checkpoints / "last.pt" and again.partial is None
    for name in ("lookahead", "monitor", "ema", "schedule", "optimizer", "scaler", "model"):
        assert _same_tensors(getattr(again, name).state_dict(), getattr(exp, name).state_dict()), name
    assert again.lookahead.slow is not None and again.monitor.smooth == pytest.approx(3.25)


def test_without_last_pt_the_run_resumes_from_prev_pt_and_says_so(tmp_path, caplog):
    exp, run = _built(tmp_path, lookahead=True, ema=0.9)
    run.path.mkdir()
    run.save_state(exp, 1)
    first = {k: v.clone() for k, v in exp.model.state_dict().items()}
    _moved(exp, 0.5)
    run.save_state(exp, 2)  # last.pt: epoch 2; prev.pt: epoch 1
    (run.checkpoints / "last.pt").unlink()
    again, run2 = _built(tmp_path, lookahead=True, ema=0.9)
    with caplog.at_level("WARNING", logger="eva8_utils"):
        run2.restore(again)
    assert again.start_epoch == 1 and again.resumed_from == run.checkpoints / "prev.pt"
    assert _same_tensors(again.model.state_dict(), first)
    assert [r for r in caplog.records if "resumed from the previous checkpoint" in r.getMessage()]
    for p in run.checkpoints.iterdir():
        p.unlink()
    with pytest.raises(CheckpointError, match="holds no checkpoint to resume from"):
        run2.restore(_built(tmp_path)[0])


def test_states_a_checkpoint_lacks_start_fresh_extra_ones_are_ignored_and_a_missing_ema_is_refused(tmp_path):
    plain, run = _built(tmp_path)  # no lookahead, no EMA
    plain.schedule, plain.monitor = None, None  # a checkpoint without a schedule's or the monitor's state
    run.path.mkdir()
    run.save_state(plain, 1)
    fuller, run2 = _built(tmp_path, lookahead=True)
    fuller.schedule.after_batch()
    steps = fuller.schedule.state_dict()
    run2.restore(fuller)  # what the file lacks starts fresh: no error
    assert fuller.start_epoch == 1 and fuller.lookahead.slow is None and fuller.monitor.smooth is None
    assert _same_tensors(fuller.schedule.state_dict(), steps)
    with pytest.raises(CheckpointError, match="has no EMA weights"):
        RunDir(run.path).restore(_built(tmp_path, ema=0.9)[0])
    rich, run3 = _built(tmp_path, "rich", lookahead=True, ema=0.9)
    _moved(rich, 0.25)
    run3.path.mkdir()
    run3.save_state(rich, 3)
    bare, _ = _built(tmp_path, "rich")
    bare.schedule = None
    RunDir(run3.path).restore(bare)  # states the experiment has no use for are left out
    assert bare.start_epoch == 3 and bare.lookahead is None and bare.ema is None
    assert _same_tensors(bare.model.state_dict(), rich.model.state_dict())


def test_a_resume_past_lookaheads_start_matches_the_uninterrupted_run(tmp_path):
    from eva8_utils.errors import TrainingInterrupted
    from eva8_utils.experiment import train

    flags = dict(lookahead=True, epochs=8, scheduler="step", seed=4)
    exp, run = _built(tmp_path, "whole", **flags)
    run.check(exp.cfg)
    whole = train(exp, run)["history"]
    exp, run = _built(tmp_path, "cut", **flags)
    run.check(exp.cfg)
    calls = iter(range(10**6))
    with pytest.raises(TrainingInterrupted):  # stopped in epoch 6 at step 22: slow weights taken (15) and moved (20)
        train(exp, run, stop=lambda: next(calls) >= 21)
    assert torch.load(run.checkpoints / "last.pt", weights_only=True)["lookahead"]["slow"] is not None
    resumed, run = _built(tmp_path, "cut", **{**flags, "resume": True})
    run.check(resumed.cfg)
    history = train(resumed, run)["history"]
    assert history["epoch"] == whole["epoch"] == list(range(1, 9))
    for key in ("train_loss", "test_loss", "test_acc"):
        assert history[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key


def test_start_writes_the_config_and_running_and_finish_adds_the_time_before_a_resume(tmp_path):
    exp, run = _built(tmp_path)
    run.path.mkdir()
    (run.path / "notes.txt").write_text("mine")
    (run.path / "history.csv").write_text("old")
    (run.path / ".last.pt.abcdefgh.tmp").write_bytes(b"half")
    exp.cfg = exp.cfg.replace(overwrite=True)
    run.start(exp)
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == exp.cfg.to_dict()
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "log.txt", "metrics.json", "notes.txt",
                                                          "summary.txt"]  # the old run's file and the temp file gone
    m = json.loads((run.path / "metrics.json").read_text())
    assert m["status"] == "running" and m["model"] == "fastnet" and m["epochs_planned"] == 3
    assert "run folder:" in (run.path / "log.txt").read_text() and run.started
    log = (run.path / "log.txt").read_text()
    assert all(line in log for line in exp.header_lines())  # versions, device, data, model
    run.wall_before = 100.0
    assert 100.0 < run.wall_time() < 200.0  # the time before the resume and this process's
    done = run.finish(wall_time_s=5.0, test_acc=50.0)
    assert done["wall_time_s"] == pytest.approx(105.0) and done["status"] == "done"
    assert json.loads((run.path / "metrics.json").read_text())["wall_time_s"] == pytest.approx(105.0)


def test_start_makes_the_folder_and_its_parents(tmp_path):
    exp, _ = _built(tmp_path)
    run = RunDir(tmp_path / "runs" / "today" / "r")
    run.start(exp)
    assert (run.path / "config.yaml").is_file() and (run.path / "metrics.json").is_file()


def test_save_state_keeps_best_pt_for_the_best_epoch_and_refuses_broken_weights(tmp_path):
    exp, run = _built(tmp_path, ema=0.9)
    run.path.mkdir()
    exp.history_so_far()["test_acc"].append(40.0)
    run.save_state(exp, 1, is_best=True)
    exp.history["test_acc"].append(30.0)
    run.save_state(exp, 2, is_best=False)
    best = torch.load(run.checkpoints / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and best["test_acc"] == 40.0 and best["model_name"] == "fastnet"
    assert _same_tensors(best["model"], exp.model.state_dict()) and best["config"]["ema"] == 0.9
    assert _same_tensors(best["ema"], exp.ema.state_dict())  # predict and the demo can use the EMA weights
    last = torch.load(run.checkpoints / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["history"]["test_acc"] == [40.0, 30.0] and last["config"]["ema"] == 0.9
    with torch.no_grad():
        next(exp.model.parameters()).fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        run.save_state(exp, 3)
    assert torch.load(run.checkpoints / "last.pt", weights_only=True)["epoch"] == 2


def test_fail_says_the_status_and_error_and_can_be_called_again(tmp_path):
    run = _run_folder(tmp_path / "r", status="running")
    closed = []

    class Writer:
        def close(self):
            closed.append(1)

    run._writer = Writer()
    assert run.fail("failed", ValueError("bad value\nsecond line")) is None
    assert run.fail("interrupted") is None and closed == [1]
    m = json.loads((run.path / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["error"] == "ValueError: bad value"
    assert RunDir(tmp_path / "absent").fail("failed", "x") is None and not (tmp_path / "absent").exists()
    run.fail("interrupted", KeyboardInterrupt())  # no message: the type alone
    assert json.loads((run.path / "metrics.json").read_text())["error"] == "KeyboardInterrupt"
    run.fail("failed", "  the disk is gone\nmore ")  # a text is written as it is, its first line
    assert json.loads((run.path / "metrics.json").read_text())["error"] == "the disk is gone"


def test_a_folder_with_hidden_files_or_a_runs_leftovers_only_is_a_new_run(tmp_path):
    for name in ("hidden", "leftovers"):
        (tmp_path / name).mkdir()
    (tmp_path / "hidden" / ".ipynb_checkpoints").mkdir()  # Jupyter's and macOS's files are not the user's
    (tmp_path / "hidden" / ".DS_Store").write_text("x")
    (tmp_path / "leftovers" / "log.txt").write_text("x")  # a run's own files, but no run
    (tmp_path / "leftovers" / "images").mkdir()
    for name in ("hidden", "leftovers"):
        run = RunDir(tmp_path / name)
        assert run.other_files() == [] and run.open_for(_cfg()).out == str(tmp_path / name) and run.mode == "new run"
        run.check(_cfg())  # the CLI's rules too
    (tmp_path / "leftovers" / "mine.txt").write_text("x")
    assert RunDir(tmp_path / "leftovers").other_files() == ["mine.txt"]


def test_the_log_holds_the_model_summary(tmp_path):
    exp, run = _built(tmp_path)
    run.start(exp)
    log = (run.path / "log.txt").read_text()
    assert exp.summary().splitlines()[0] in log and "Total params" in log
    assert (run.path / "summary.txt").read_text() == exp.summary() + "\n"


def test_a_damaged_last_pt_falls_back_to_prev_pt_and_two_damaged_ones_name_the_last(tmp_path, caplog):
    exp, run = _built(tmp_path)
    run.path.mkdir()
    run.save_state(exp, 1)
    run.save_state(exp, 2)
    last, prev = run.checkpoints / "last.pt", run.checkpoints / "prev.pt"
    last.write_bytes(last.read_bytes()[:100])  # a torn file
    again, run2 = _built(tmp_path)
    with caplog.at_level("WARNING", logger="eva8_utils"):
        run2.restore(again)
    assert again.start_epoch == 1 and again.resumed_from == prev
    assert any("trying the previous checkpoint" in r.getMessage() for r in caplog.records)
    prev.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        RunDir(run.path).restore(_built(tmp_path)[0])
    assert "last.pt" in str(e.value) and "prev.pt" not in str(e.value)  # the first error: the newest file's


def test_restore_takes_the_position_and_the_wall_time_before_the_resume(tmp_path):
    exp, run = _built(tmp_path)
    run.path.mkdir()
    run.save_state(exp, 0)  # nothing timed yet: no time before the resume
    again = RunDir(run.path)
    again.restore(_built(tmp_path)[0])
    assert again.wall_before == 0.0
    run.wall_before = 50.0  # 50 s of wall time so far, 0 s of them training
    run.save_state(exp, 1, partial={"batch": 2})
    assert "at batch 2 of epoch 2" in run.faults.resume_point()  # what a failed write says about --resume
    resumed, again = _built(tmp_path)[0], RunDir(run.path)
    again.restore(resumed)
    assert resumed.partial == {"batch": 2} and resumed.start_epoch == 1
    assert 50.0 <= again.wall_before < 60.0
    assert "at batch 2 of epoch 2" in again.faults.resume_point()  # what a failed write says about --resume
    exp.history_so_far()["_epoch_times"] = [100.0, 200.0]  # more training time than the wall time stored
    run.save_state(exp, 2)
    again = RunDir(run.path)
    again.restore(_built(tmp_path)[0])
    assert again.wall_before == pytest.approx(300.0)


def test_a_run_with_prev_pt_only_is_resumed_and_a_config_that_is_not_a_mapping_is_none(tmp_path):
    exp, run = _built(tmp_path)
    run.path.mkdir()
    (run.path / "config.yaml").write_text(yaml.safe_dump(exp.cfg.to_dict()))
    run.save_state(exp, 1)
    run.save_state(exp, 2)
    (run.checkpoints / "last.pt").unlink()
    assert run.has_checkpoint()
    cli = RunDir(run.path)
    cli.check(exp.cfg.replace(resume=True))
    assert cli.resuming and not cli.restart
    (run.path / "config.yaml").write_text("- a list\n- not settings\n")
    assert RunDir(run.path).saved_config() is None


class _Board:
    """A stand-in SummaryWriter that records what it is given."""

    def __init__(self):
        self.scalars, self.hparams, self.closed = [], [], 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), int(step)))

    def add_hparams(self, hparams, metrics, run_name):
        self.hparams.append(metrics)

    def flush(self):
        pass

    def close(self):
        self.closed += 1


def test_tensorboard_gets_every_epochs_numbers_the_lr_of_every_step_and_the_final_ones(tmp_path):
    pytest.importorskip("tensorboard")
    from eva8_utils.experiment import train

    exp, run = _built(tmp_path, ema=0.9, epochs=2, tensorboard=True)
    run.check(exp.cfg)
    board = run._writer = _Board()
    history = train(exp, run)["history"]
    epochs = {}
    for tag, value, step in board.scalars:
        epochs.setdefault(tag, {})[step] = value
    assert set(epochs) == {"train/lr", "train/loss", "train/acc", "test/loss", "test/acc", "ema_test/loss",
                           "ema_test/acc"}
    assert sorted(epochs["train/lr"]) == list(range(1, 9))  # 4 steps an epoch
    assert [lr for _, _, lr, _ in history["steps"]] == pytest.approx([epochs["train/lr"][s] for s in range(1, 9)])
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "ema_test_loss", "ema_test_acc"):
        part, what = key.rsplit("_", 1)
        assert [epochs[f"{part}/{what}"][e] for e in (1, 2)] == pytest.approx(history[key], rel=1e-6), key
    run.finish(test_acc=history["test_acc"][-1])
    (final,) = board.hparams
    assert final["hparam/test_acc"] == pytest.approx(history["test_acc"][-1]) and board.closed == 1
    assert final["hparam/best_test_acc"] == pytest.approx(max(history["test_acc"]))
    run.fail("failed", "after the end")  # the writer is gone: nothing closed twice
    assert board.closed == 1


def test_best_pt_keeps_the_first_epoch_that_reached_the_best_accuracy(tmp_path):
    from types import SimpleNamespace

    def epoch_ends(saver, history, epoch, acc):
        row = {"train_loss": 1.0, "train_acc": 50.0, "test_loss": 1.0, "test_acc": acc, "lrs": [0.1],
               "step_losses": [1.0]}
        add_epoch(history, epoch, row)
        saver.after_epoch(SimpleNamespace(row=row, history=history, epoch=epoch))
        return torch.load(saver.run.checkpoints / "best.pt", weights_only=True)["epoch"]

    for name, resumed in (("new", False), ("resumed", True)):  # resumed: from a checkpoint inside epoch 1
        exp, run = _built(tmp_path, name)
        run.path.mkdir()
        if resumed:
            exp.history_so_far()  # the checkpoint's history: no epoch finished yet
        saver = SaveRun(run, exp)
        history = exp.history_so_far()
        assert epoch_ends(saver, history, 1, 0.0) == 1, name  # even an epoch at 0% is the best so far
        assert [epoch_ends(saver, history, e, acc) for e, acc in ((2, 50.0), (3, 50.0), (4, 45.0))] == [2, 2, 2]
    assert torch.load(run.checkpoints / "last.pt", weights_only=True)["epoch"] == 4
    assert SaveRun(run, exp).best == 50.0  # a resumed run compares with the best so far


def test_a_checkpoint_inside_an_epoch_comes_every_checkpoint_minutes_of_training(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import eva8_utils.rundir as rundir

    clock = [1000.0]
    monkeypatch.setattr(rundir.time, "monotonic", lambda: clock[0])
    exp, run = _built(tmp_path, checkpoint_minutes=1.0)
    run.path.mkdir()
    saver = SaveRun(run, exp)
    saved = []
    monkeypatch.setattr(run, "save_state", lambda exp, epoch, partial=None: saved.append((epoch, partial["batch"])))

    def step(epoch, batch, at):
        clock[0] = at
        state = SimpleNamespace(epoch=epoch, batch=batch, n_batches=4, lrs=[0.1],
                                snapshot=lambda: {"batch": batch})
        if batch == 1:
            saver.before_epoch(state)
        saver.after_step(state)

    step(1, 1, 1090.0)  # 90 s of set-up (data, compile) before the first step: not counted
    step(1, 2, 1140.0)
    assert saved == []
    step(1, 3, 1150.5)  # 60.5 s after training started
    step(1, 4, 1215.0)  # 64.5 s, but the epoch's last batch: the end-of-epoch checkpoint follows instead
    assert saved == [(0, 3)]
    step(2, 1, 1240.0)  # a later epoch does not restart the clock: 89.5 s since the last save
    assert saved == [(0, 3), (1, 1)]
    monkeypatch.setattr(rundir.D, "world_size", lambda: 2)
    assert SaveRun(run, exp).interval == 0.0  # under torchrun: checkpoints at the end of epochs only


def test_the_clis_resume_rules(tmp_path):
    saved = _cfg(batch_size=16)

    def resume(path, **changes):
        return saved.replace(resume=True, out=str(path), **changes)

    with pytest.raises(ConfigError, match="is a file; give a folder"):
        (tmp_path / "f").write_text("x")
        RunDir(tmp_path / "f").check(saved)
    with pytest.raises(ConfigError, match="has no checkpoint to continue from"):
        RunDir(tmp_path / "empty").check(resume(tmp_path / "empty"))
    bare = _run_folder(tmp_path / "bare", status="running", config=False)  # a checkpoint, no config.yaml
    bare.check(resume(bare.path))
    assert bare.resuming and not bare.restart
    early = _run_folder(tmp_path / "early", status="running", checkpoint=False, cfg=saved)  # killed before one
    early.check(resume(early.path))
    assert early.restart and not early.resuming
    changed = _run_folder(tmp_path / "changed", status="running", cfg=saved)
    with pytest.raises(ConfigError, match=r"was started with other settings \(lr"):
        changed.check(resume(changed.path, lr=0.123))
    two = _run_folder(tmp_path / "two", status="running", cfg=saved)  # a torchrun run of 2 processes x 16
    (two.path / "metrics.json").write_text(json.dumps({"status": "running", "world_size": 2}))
    two.check(resume(two.path, batch_size=32))  # one process x 32: the same global batch
    assert two.resuming
    with pytest.raises(ConfigError, match="batch-size"):
        RunDir(two.path).check(resume(two.path, batch_size=48))
    with pytest.raises(ConfigError, match="batch-size"):  # no world size saved: one process
        RunDir(changed.path).check(resume(changed.path, batch_size=32))
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        RunDir(two.path).check(saved)
    RunDir(two.path).check(saved.replace(overwrite=True))
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (mine / name).write_text("keep")
    with pytest.raises(ConfigError, match=r"holds other files \(a.txt, b.txt, c.txt, ...\) and no run"):
        RunDir(mine).check(saved)
    RunDir(mine).check(saved.replace(overwrite=True))  # among them: only a run's own files are ever replaced


def test_temporary_files_of_interrupted_writes_are_removed_from_every_folder_a_run_writes(tmp_path):
    run = _run_folder(tmp_path / "r", status="running")
    (run.path / "images").mkdir()
    torn = [run.path / ".metrics.json.a1b2c3d4.tmp", run.checkpoints / ".last.pt.abcdefgh.tmp",
            run.path / "images" / ".curves.png.ABCD_123.tmp"]
    kept = [run.path / ".hidden.tmp", run.path / "images" / "curves.png", run.path / "notes.a1b2c3d4.tmp"]
    for p in torn + kept:
        p.write_bytes(b"x")
    assert sorted(run.remove_temporary_files()) == sorted(torn)
    assert not any(p.exists() for p in torn) and all(p.exists() for p in kept)


def test_metrics_json_is_written_by_the_main_process_only_and_a_resume_keeps_its_numbers(tmp_path, monkeypatch):
    import eva8_utils.rundir as rundir

    run = _run_folder(tmp_path / "r", status="running")
    before = (run.path / "metrics.json").read_text()
    monkeypatch.setattr(rundir.D, "is_main", lambda: False)
    assert run.write_metrics("done", test_acc=1.0)["status"] == "done"
    assert (run.path / "metrics.json").read_text() == before
    monkeypatch.undo()
    exp, run = _built(tmp_path, "a")
    run.start(exp)
    SaveRun(run, exp).on_warning(None, "loss spiked")
    exp2, again = _built(tmp_path, "a")
    again.metrics, again.resuming = again.read_metrics(), True  # what restore() leaves
    again.start(exp2)
    assert json.loads((again.path / "metrics.json").read_text())["warnings"] == ["loss spiked"]
    new = RunDir(again.path)
    new.metrics = {"stale": 1}
    new.start(exp2)  # a new run in the same folder: its own numbers only
    assert "stale" not in json.loads((again.path / "metrics.json").read_text())


def test_any_of_a_runs_own_files_marks_a_run_and_a_new_runs_time_starts_at_zero(tmp_path):
    for name in ("config.yaml", "history.csv", "checkpoints", "metrics.json"):
        path = tmp_path / name.replace(".", "_")
        path.mkdir()
        (path / name).mkdir() if name == "checkpoints" else (path / name).write_text("{}")
        assert RunDir(path).holds_run(), name
        with pytest.raises(ConfigError, match="already holds a run"):
            RunDir(path).check(_cfg())
    assert RunDir(tmp_path / "new").finish(wall_time_s=5.0)["wall_time_s"] == 5.0
