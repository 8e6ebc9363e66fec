"""train/prediction_base.py: the residual state prediction's base and calibrated change, one computation for the
training step, the retrieval eval and the diagnosis; checkpoints of the older format (the scale as a buffer in both
weight files) still load, for resuming, initialising and evaluating."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from train_helpers import make_trainer, tiny_config

from internlm.checkpoint import latest_checkpoint, load_model
from internlm.checkpoint.layout import CHANGE_SCALE_KEY, META_FILE, STUDENT_FILE, TEACHER_FILE, read_meta
from internlm.checkpoint.weights import read_change_scale, read_init_source
from internlm.config.schema import ModelConfig
from internlm.eval.retrieval import load_checkpoint
from internlm.model.reprojection import reproject_steps
from internlm.train.losses import prediction_minimiser
from internlm.train.meta_arch import EgoAgentMetaArch
from internlm.train.prediction_base import ResidualPrediction, choose_scale

OLD_SCALE = 0.35


def test_choose_scale_keeps_the_smallest_within_float_noise_of_the_lowest():
    assert choose_scale([0.0, 0.5, 1.0], [2.0, 1.5, 1.6]) == 0.5
    assert choose_scale([0.0, 0.5, 1.0], [1.500004, 1.5, 1.6]) == 0.0  # 4e-6 nats is no gain
    assert choose_scale([1.0, 0.5, 0.0], [1.0, 1.0, 1.0]) == 0.0  # order of the list does not matter


def _old_format(folder) -> None:
    """Rewrite a checkpoint as the older format had it: the scale a float32 buffer in both weight files, none in
    meta.json."""
    for name in (STUDENT_FILE, TEACHER_FILE):
        state = torch.load(folder / name, weights_only=True)
        assert CHANGE_SCALE_KEY not in state
        state[CHANGE_SCALE_KEY] = torch.tensor(OLD_SCALE)
        torch.save(state, folder / name)
    meta = read_meta(str(folder))
    assert meta.pop(CHANGE_SCALE_KEY) == 1.0  # the new format: meta.json, 1 before any calibration
    (folder / META_FILE).write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A stage-2 run (residual prediction with reprojection, as the demo) of 2 steps in the older format."""
    save = tmp_path_factory.mktemp("old") / "run"
    cfg = tiny_config(2, save, steps=4, **{"ckpt.checkpoint_every": 2})
    torch.manual_seed(0)
    make_trainer(cfg).fit(max_iterations=2)
    folder = latest_checkpoint(str(save))
    _old_format(Path(folder))
    return cfg, folder


def test_an_old_checkpoint_resumes_with_its_scale(old_run):
    cfg, folder = old_run
    assert cfg.model.prediction_residual and cfg.model.prediction_reprojection
    trainer = make_trainer(copy.deepcopy(cfg))  # resumes from step 2 (strict weight load)
    assert trainer.progress.step == 2
    assert trainer.meta.prediction.change_scale == pytest.approx(OLD_SCALE)
    assert read_change_scale(folder) == pytest.approx(OLD_SCALE)


def test_an_old_checkpoint_initialises_stage_2(old_run, tmp_path):
    cfg, folder = old_run
    meta = EgoAgentMetaArch(tiny_config(2, tmp_path / "new"))
    source = read_init_source(folder)  # the old buffer is neither missing nor unexpected
    meta.init_from(source.folder, source.student_state, source.teacher_state, source.centers)
    assert meta.prediction.change_scale == 1.0  # a new run trains the change at full scale
    saved = torch.load(f"{folder}/{STUDENT_FILE}", weights_only=True)
    assert torch.equal(meta.student.pred_head.last_layer.parametrizations.weight.original0,
                       saved["pred_head.last_layer.parametrizations.weight.original0"])


def test_the_eval_predicts_with_the_base_and_scale_of_training(old_run):
    """The retrieval eval's prediction of an old checkpoint is the training step's: the teacher's view of each
    frame reprojected by the step's rotation, as L_pred's minimiser, plus the old buffer's share of the change."""
    cfg, folder = old_run
    load_model(folder, "model", "cpu")  # strict: the weights hold no scale any more
    ck = load_checkpoint(folder, "teacher", "cpu", "sdpa")
    assert ck.prediction.reprojection and ck.prediction.change_scale == pytest.approx(OLD_SCALE)
    torch.manual_seed(1)
    P = cfg.data.pred_img_size
    frames, poses = torch.rand(2, 3, 3, P, P), torch.zeros(2, 3, 4, 5, 17)
    motion = torch.tensor([[0.995, 0.0, 0.0998, 0.0, 1.0, 0.0, -0.0998, 0.0, 0.995, 0.0, 0.0, 0.0]]).repeat(2, 3, 1)
    focal = torch.full((2,), P * 0.8)
    with torch.no_grad():
        gallery = ck._represent(ck.gallery_net, frames)
        got = ck.predict(frames, poses, gallery, motion, focal)
        teacher = load_model(folder, "teacher", "cpu")[0]
        reprojected = teacher.represent(reproject_steps(frames, motion, focal).flatten(0, 1)).logits.view(2, 3, -1)
        base = prediction_minimiser(reprojected, ck.center, cfg.loss.teacher_temp, cfg.loss.student_temp)
        change = ck.student.forward_joint(frames, poses).future_logits
        assert change.abs().max() > 1e-4  # two steps moved the change off zero: the scale matters
        torch.testing.assert_close(got, base + float(torch.tensor(OLD_SCALE)) * change)
        # without the camera motion there is no base to build
        with pytest.raises(ValueError, match="camera motion"):
            ck.predict(frames, poses, gallery)


def test_without_the_residual_option_the_head_output_is_the_prediction():
    off = ResidualPrediction(ModelConfig(prediction_residual=False))
    head = torch.randn(2, 3, 8)
    assert off.predict(head, None) is head and off.base(head, torch.zeros(8), 0.04, 0.1) is None
    assert off.meta_state() == {}
