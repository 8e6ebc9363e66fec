"""A resume lists every config key that differs from the checkpoint's (train/config_change.py) and stops on a change
of experiment unless ckpt.allow_config_change=True, which records it in the checkpoints' meta.json."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from train_helpers import make_trainer, tiny_config

from internlm.train.config_change import ConfigChangeError

STEPS = 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A stage-1 run folder with a complete checkpoint at step 2 (1 rank, data.micro_num 4)."""
    folder = tmp_path_factory.mktemp("saved") / "run"
    trainer = make_trainer(tiny_config(1, folder, steps=STEPS, micro_num=4, accum=1))
    trainer.fit()
    return folder


def resume(saved, tmp_path, steps=STEPS, **changes):
    folder = tmp_path / "run"
    shutil.copytree(saved, folder)
    return make_trainer(tiny_config(1, folder, steps=steps, micro_num=changes.pop("micro_num", 4), accum=1,
                                    **changes)), folder


def test_a_changed_lr_stops_the_resume_and_names_it(saved, tmp_path):
    with pytest.raises(ConfigChangeError) as error:
        resume(saved, tmp_path, **{"adam.lr": 5e-3})
    message = str(error.value)
    assert f"the config differs from the one checkpoint {tmp_path}/run/{STEPS} was trained with (1 key" in message
    assert "  * adam.lr: 0.0005 -> 0.005" in message and "ckpt.allow_config_change=True" in message


def test_allowed_changes_are_warned_about_and_recorded_in_the_checkpoints(saved, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trainer, folder = resume(saved, tmp_path, steps=STEPS + 1, **{"adam.lr": 5e-3, "loss.rep_weight": 2.0,
                                                                       "ckpt.allow_config_change": True})
    assert "* adam.lr: 0.0005 -> 0.005" in caplog.text and "* loss.rep_weight: 1.0 -> 2.0" in caplog.text
    trainer.fit()
    record = json.load(open(folder / str(STEPS + 1) / "meta.json"))["config_changes"]
    changed = [("adam.lr", 5e-4, 5e-3, True), ("data.total_steps", STEPS, STEPS + 1, True),
               ("loss.rep_weight", 1.0, 2.0, True), ("lr_scheduler.total_steps", STEPS, STEPS + 1, True)]
    assert [(r["step"], [(c["key"], c["old"], c["new"], c["experiment"]) for c in r["changes"]]) for r in record] == \
        [(STEPS, changed)]
    run_record = json.load(open(sorted((folder / "runs").glob("*/run.json"))[-1]))  # this run's (the newest)
    assert [c["key"] for c in run_record["config_changes"][0]["changes"]] == [c[0] for c in changed]


def test_a_smaller_micro_batch_on_the_same_ranks_halves_the_global_batch_and_stops(saved, tmp_path):
    with pytest.raises(ConfigChangeError) as error:
        resume(saved, tmp_path, micro_num=2)
    message = str(error.value)
    assert "    data.micro_num: 4 -> 2\n" in message  # listed; the global batch is what changes the experiment
    assert ("  * global batch (data.micro_num x ranks): 4 -> 2 (saved with data.micro_num=4 on 1 rank, now 2 x 1; "
            "to keep 4, relaunch with --opt data.micro_num=4)") in message


def test_another_model_shape_gets_the_changed_keys_not_a_state_dict_error(saved, tmp_path):
    shape = {"model.hidden_size": 64, "teacher.hidden_size": 64}
    with pytest.raises(ConfigChangeError) as error:
        resume(saved, tmp_path, **shape)
    assert "* model.hidden_size: 32 -> 64" in str(error.value) and "* teacher.hidden_size: 32 -> 64" in str(error.value)
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(ConfigChangeError) as error:  # allowed, and still impossible: said so, by parameter
        resume(saved, tmp_path, **shape, **{"ckpt.allow_config_change": True})
    message = str(error.value)
    assert "cannot be resumed: the model's parameters have another shape (" in message
    assert "because of model.hidden_size: 32 -> 64; teacher.hidden_size: 32 -> 64" in message
    assert "even with ckpt.allow_config_change" in message and "size mismatch" not in message


def test_how_a_run_executes_is_listed_and_where_it_writes_and_logs_is_not(saved, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trainer, _ = resume(saved, tmp_path, **{"data.num_workers": 1, "parallel.timeout_s": 60.0,
                                                 "model.checkpoint": True, "monitor.log_every": 3,
                                                 "data.valid_every": 5, "ckpt.checkpoint_every": 7})
    assert trainer.progress.step == STEPS
    text = next(r.getMessage() for r in caplog.records if "the config differs" in r.getMessage())
    assert "(4 keys; * another experiment)" in text
    for line in ("    ckpt.checkpoint_every: 1000 -> 7", "    data.num_workers: 0 -> 1",
                 "    model.checkpoint: false -> true", "    parallel.timeout_s: 1800.0 -> 60.0"):
        assert line in text, text
    assert "monitor.log_every" not in text and "valid_every" not in text
    assert not any(line.startswith("  *") for line in text.splitlines())  # none stops the run


def test_keys_added_to_the_schema_since_the_checkpoint_are_not_changes(saved, tmp_path, caplog):
    """A checkpoint written before a key existed (its config.json lacks it): the key's default is what it ran with."""
    folder = tmp_path / "run"
    shutil.copytree(saved, folder)
    path = folder / str(STEPS) / "config.json"
    old = json.load(open(path))
    del old["ckpt"]["allow_config_change"], old["parallel"]["timeout_s"]
    json.dump(old, open(path, "w"))
    with caplog.at_level(logging.WARNING):
        trainer = make_trainer(tiny_config(1, folder, steps=STEPS, micro_num=4, accum=1))
    assert trainer.progress.step == STEPS and "the config differs" not in caplog.text
