"""data.calibration_takes: training takes held out of stage 2, on whose clips the scale of the learned prediction
change is chosen after the last step (train/prediction_base.py ResidualPrediction.calibrate, through
EgoAgentMetaArch.calibrate_prediction_change and Trainer.calibrate_prediction)."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import DEMO, make_trainer, tiny_overrides

from internlm.config import ConfigError, load_config
from internlm.data.build import build_clip_dataset, build_valid_loader
from internlm.train.losses import prediction_loss
from internlm.train.meta_arch import EgoAgentMetaArch
from internlm.train.trainer import new_run_pose_statistics

SCALES = tuple(i / 10 for i in range(11))


def _cfg(tmp_path, world, **extra):
    return load_config(DEMO[2], tiny_overrides(tmp_path / "run", data_root={
        "frames": world.frames_root, "poses": world.pose_root, "walks": []}, **extra))


def _takes(dataset) -> set[str]:
    return {dataset.clip_meta(i)[0] for i in range(len(dataset))}


def test_config_errors_name_the_key(tmp_path):
    base = tiny_overrides(tmp_path / "run")  # Generated data: no takes to hold out
    with pytest.raises(ConfigError, match="data.calibration_takes=1 .*EgoExoClips"):
        load_config(DEMO[2], base + [("data.calibration_takes", 1)])
    with pytest.raises(ConfigError, match="data.calibration_takes=-1 must be >= 0"):
        load_config(DEMO[2], base + [("data.calibration_takes", -1)])
    no_residual = [(f"{s}.{k}", False) for s in ("model", "teacher")
                   for k in ("prediction_residual", "prediction_reprojection")]
    with pytest.raises(ConfigError, match="prediction_residual=True"):
        load_config(DEMO[2], base + no_residual + [("data.dataset_type", "EgoExoClips"),
                                                   ("data.calibration_takes", 1)])


@pytest.mark.slow
def test_the_last_takes_are_held_out_of_training(tmp_path, processed_world):
    train_uids = processed_world.takes["train"]
    everything = build_clip_dataset(_cfg(tmp_path, processed_world, **{"data.calibration_takes": 0}).data, "train",
                                    train=False)
    cfg = _cfg(tmp_path, processed_world, **{"data.calibration_takes": 1})
    training = build_clip_dataset(cfg.data, "train", train=False)
    held_out = build_clip_dataset(cfg.data, "train", train=False, calibration=True)
    assert _takes(held_out) == {sorted(_takes(everything))[-1]} and _takes(held_out) <= set(train_uids)
    assert _takes(training) == _takes(everything) - _takes(held_out)
    assert len(training) + len(held_out) == len(everything)
    # the validation split is never held out of; every take held out would leave nothing to train on
    with pytest.raises(ValueError, match="calibration clips come from data.egoexo_train_split"):
        build_clip_dataset(cfg.data, "val", train=False, calibration=True)
    n = len(_takes(everything))
    cfg_all = _cfg(tmp_path, processed_world, **{"data.calibration_takes": n})
    with pytest.raises(ValueError, match=f"data.calibration_takes={n}: .* at least one must stay"):
        build_clip_dataset(cfg_all.data, "train", train=False)


def _calibration_batches(cfg, meta):
    dataset = build_clip_dataset(cfg.data, "train", train=False, calibration=True)
    return list(build_valid_loader(cfg.data, 0, 1, True, dataset))


def _set_change_gain(meta, gain: float) -> None:
    """Every prototype gain of the student's state-prediction head (zero at the start of a residual run)."""
    with torch.no_grad():
        meta.student.pred_head.last_layer.parametrizations.weight.original0.fill_(gain)


@pytest.mark.slow
def test_the_scale_with_the_lowest_held_out_loss_is_kept(tmp_path, processed_world):
    cfg = _cfg(tmp_path, processed_world, **{"data.calibration_takes": 1})
    torch.manual_seed(0)
    meta = EgoAgentMetaArch(cfg)
    meta.set_pose_statistics(*new_run_pose_statistics(cfg))  # as the trainer does (model.pose_normalization)
    batches = _calibration_batches(cfg, meta)
    temp = cfg.loss.teacher_temp

    # nothing learned: no scale changes L_pred, and the smallest (the base alone) is kept
    got = meta.calibrate_prediction_change(batches, temp, SCALES)
    assert max(got["l_pred"]) - min(got["l_pred"]) < 1e-6 and got["scale"] == 0.0
    assert got["num_queries"] == 3 * sum(len(b["frames"]) for b in batches)

    # a large random change: every part of it costs L_pred, the base alone is kept and is then the prediction
    _set_change_gain(meta, 20.0)
    got = meta.calibrate_prediction_change(batches, temp, SCALES)
    assert got["scale"] == 0.0 and got["l_pred"][-1] > got["l_pred"][0] + 1e-3
    assert meta.prediction.change_scale == 0.0

    # a small change pointed down L_pred's slope at the base: part of it helps, all of it overshoots
    _set_change_gain(meta, 0.05)
    slope = meta.calibrate_prediction_change(batches, temp, (0.0, 0.01))["l_pred"]
    _set_change_gain(meta, 0.05 if slope[1] < slope[0] else -0.05)
    got = meta.calibrate_prediction_change(batches, temp, SCALES)
    lowest = min(got["l_pred"])
    assert 0.0 < got["scale"] < 1.0 and got["l_pred"][SCALES.index(got["scale"])] == lowest
    assert lowest < got["l_pred"][0] - 1e-4 and lowest < got["l_pred"][-1] - 1e-5
    # the kept scale is what the model now predicts with: base + scale * change
    total, queries = 0.0, 0
    for t_frames, base, change in meta.prediction_parts(batches, temp):
        n = t_frames.shape[0] * (t_frames.shape[1] - 1)
        predicted = meta.prediction.predict(change, base)
        total += float(prediction_loss(predicted, t_frames, meta.pred_center, temp, cfg.loss.student_temp)) * n
        queries += n
    assert total / queries == pytest.approx(got["l_pred"][SCALES.index(got["scale"])], rel=1e-5)
    assert abs(total / queries - got["l_pred"][-1]) > 1e-5


@pytest.mark.slow
def test_a_run_calibrates_after_its_last_step_and_saves_the_scale(tmp_path, processed_world):
    from internlm.checkpoint import latest_checkpoint, load_model
    from internlm.checkpoint.weights import read_change_scale

    cfg = _cfg(tmp_path, processed_world, steps=3, **{"data.calibration_takes": 1})
    torch.manual_seed(0)
    trainer = make_trainer(cfg)
    history = trainer.fit()
    result = json.loads((tmp_path / "run" / "prediction_calibration.json").read_text())
    held_out = build_clip_dataset(cfg.data, "train", train=False, calibration=True)
    assert result["step"] == 3 and result["takes"] == sorted(_takes(held_out))
    assert len(result["l_pred"]) == 21 and result["scales"][0] == 0.0 and result["scales"][-1] == 1.0
    lowest = min(result["l_pred"])
    assert result["scale"] == min(a for a, v in zip(result["scales"], result["l_pred"]) if v <= lowest + 1e-5)
    assert history[-1]["prediction_change_scale"] == result["scale"]
    # the training clips left the held-out take out (the pose statistics too)
    assert not _takes(held_out) & _takes(build_clip_dataset(cfg.data, "train", train=False))
    assert read_change_scale(str(latest_checkpoint(str(tmp_path / "run")))) == result["scale"]
    load_model(str(tmp_path / "run"), "model", "cpu")  # the weights hold no scale (strict load)
    # the retrieval eval records the scale it predicted with and, at the calibrated step, where it came from
    import eval_feature_retrieval
    from internlm.eval.retrieval import load_checkpoint

    ck = load_checkpoint(str(tmp_path / "run"), "teacher", "cpu", "sdpa")
    assert eval_feature_retrieval.prediction_calibration(ck, 3) == dict(result, scale=result["scale"], calibrated=True)
    assert eval_feature_retrieval.prediction_calibration(ck, 2) == {"scale": result["scale"], "calibrated": False}


@pytest.mark.slow
def test_two_ranks_calibrate_like_one(tmp_path, processed_world):
    """train.py on 2 gloo ranks (DDP, the global batch split between them) chooses from the same held-out L_pred as
    one process: each rank scores its share of the held-out clips and the sums are all-reduced."""
    from eval_helpers import run_script, torchrun

    n = len(build_clip_dataset(_cfg(tmp_path, processed_world, **{"data.calibration_takes": 1}).data, "train",
                               train=False, calibration=True))
    got = {}
    for world in (1, 2):
        folder = tmp_path / f"world{world}"
        opts = dict(tiny_overrides(folder, steps=2, micro_num=4 // world, accum=1, data_root={
            "frames": processed_world.frames_root, "poses": processed_world.pose_root, "walks": []}))
        # 2 clips per batch on one rank, 1 per rank on two: both score the first n // 2 * 2 held-out clips
        opts.update({"data.calibration_takes": 1, "data.valid_micro_num": 2 // world})
        args = ["train.py", "--config", DEMO[2], "--device", "cpu"]
        for k, v in opts.items():
            args += ["--opt", f"{k}={v!r}"]
        (torchrun(args, nproc=2) if world == 2 else run_script(args))
        got[world] = json.loads((folder / "prediction_calibration.json").read_text())
    assert got[1]["num_queries"] == got[2]["num_queries"] == 3 * (n // 2 * 2)
    assert got[1]["scale"] == got[2]["scale"] and got[1]["takes"] == got[2]["takes"]
    for a, b in zip(got[1]["l_pred"], got[2]["l_pred"]):
        assert a == pytest.approx(b, rel=1e-5)
