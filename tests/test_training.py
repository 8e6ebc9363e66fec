"""The training engine: EMA teacher, exact resume, fp16 overflow handling, atomic checkpoints, stage-2 init."""

import copy
import json
import logging
import os
import re
import shutil
import signal

import pytest
import torch
from train_helpers import flat_state, make_trainer, tiny_config

from internlm.checkpoint import save_weights_only
from internlm.checkpoint.layout import MARKER, complete_steps, latest_checkpoint
from internlm.checkpoint.train_state import CorruptCheckpointError
from internlm.checkpoint.weights import read_init_source
from internlm.initialize.preemption import StopRequest
from internlm.model import AttentionBackendError
from internlm.model.modeling_internlm import InternLMBlock
from internlm.train.losses import prediction_loss, prediction_minimiser
from internlm.train.meta_arch import STAT_NAMES, EgoAgentMetaArch
from internlm.train.trainer import RunawayTrainingError, _default_loader_factory


def test_teacher_is_the_ema_of_the_student(tmp_path):
    trainer = make_trainer(tiny_config(2, tmp_path, steps=4))
    meta = trainer.meta
    teacher_before = [p.detach().clone() for p in meta.teacher.parameters()]
    trainer.fit(max_iterations=1)
    m = trainer.schedules.at(0).momentum
    assert m == trainer.cfg.momentum_scheduler.momentum_teacher < 1.0  # the cosine starts at the base momentum
    for before, t, s in zip(teacher_before, meta.teacher.parameters(), meta.student.parameters()):
        # the update is one lerp, t + (1 - m)(s - t): the formula to fp32 rounding (one ulp, 1.2e-7 at 1.0)
        torch.testing.assert_close(t, m * before + (1 - m) * s, rtol=2.4e-7, atol=1e-7)
    changed = sum(int(not torch.equal(b, t)) for b, t in zip(teacher_before, meta.teacher.parameters()))
    assert changed > 10  # and the update really moved the teacher


@pytest.mark.parametrize("stage", [1, 2])
def test_exact_resume(tmp_path, stage):
    """2N steps straight == N steps, a new process-like Trainer resuming, N more steps: same losses and bitwise
    the same weights, teacher and centers (fp32, CPU)."""
    straight = make_trainer(tiny_config(stage, tmp_path / "straight", steps=6))
    history = straight.fit()
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]

    cfg = tiny_config(stage, tmp_path / "resumed", steps=6, **{"ckpt.checkpoint_every": 3})
    first = make_trainer(cfg)
    first.fit(max_iterations=3)
    assert complete_steps(str(tmp_path / "resumed")) == [3]
    second = make_trainer(copy.deepcopy(cfg))
    assert second.progress.step == 3 and second.progress.consumed_samples == 3 * cfg.data.micro_num
    resumed = second.fit()
    for a, b in zip(history[3:], resumed):
        assert a["step"] == b["step"]
        for key in ("loss", "loss_rep", "grad_norm") + (("loss_pred", "loss_act") if stage == 2 else ()):
            assert a[key] == b[key], (key, a[key], b[key])
    assert torch.equal(flat_state(straight), flat_state(second))
    state_a = straight.optimizer.state_dict()["state"]
    state_b = second.optimizer.state_dict()["state"]
    assert all(torch.equal(state_a[i]["exp_avg_sq"], state_b[i]["exp_avg_sq"]) for i in state_a)


def test_fp16_overflow_skips_the_step(tmp_path):
    cfg = tiny_config(2, tmp_path, steps=4, **{"model.dtype": "torch.float16", "teacher.dtype": "torch.float16",
                                               "grad_scaler.hysteresis": 1, "grad_scaler.fp16.initial_scale": 32.0})
    trainer = make_trainer(cfg)
    trainer.fit(max_iterations=1)
    before = flat_state(trainer).clone()
    optim_before = copy.deepcopy(trainer.optimizer.state_dict())
    scale_before = trainer.scaler.scale
    progress = trainer.progress
    step_before, consumed_before = progress.step, progress.consumed_samples

    param = next(p for p in trainer.meta.student.parameters() if p.ndim == 2)
    handle = param.register_hook(lambda g: g * float("inf"))  # one injected inf gradient
    trainer.fit(max_iterations=1)
    handle.remove()
    last = trainer.history[-1]
    assert last["update_applied"] == 0.0 and progress.skipped_steps == 1
    assert torch.equal(flat_state(trainer), before)  # parameters, teacher and centers untouched
    after = trainer.optimizer.state_dict()
    for i, st in optim_before["state"].items():
        assert torch.equal(st["exp_avg"], after["state"][i]["exp_avg"]) and st["step"] == after["state"][i]["step"]
    assert progress.step == step_before  # the schedules did not advance...
    assert progress.consumed_samples == consumed_before + cfg.data.micro_num  # ... the data did
    assert trainer.scaler.scale == scale_before / 2

    trainer.fit(max_iterations=1)  # and training goes on
    assert trainer.history[-1]["update_applied"] == 1.0 and progress.step == step_before + 1


def test_interrupted_save_is_ignored(tmp_path, caplog):
    cfg = tiny_config(1, tmp_path, steps=4, **{"ckpt.checkpoint_every": 2})
    trainer = make_trainer(cfg)
    trainer.fit()
    assert complete_steps(str(tmp_path)) == [2, 4]
    os.remove(tmp_path / "4" / MARKER)  # as if the process died while writing step 4
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "2")
    with caplog.at_level(logging.WARNING):
        resumed = make_trainer(copy.deepcopy(cfg))
    assert resumed.progress.step == 2
    assert any(f"skipping {tmp_path / '4'}: no COMPLETE marker" in r.getMessage() for r in caplog.records)
    resumed.fit()
    assert complete_steps(str(tmp_path)) == [2, 4]  # the broken step-4 folder was rewritten, completely


def test_stage2_starts_from_stage1(tmp_path):
    s1 = make_trainer(tiny_config(1, tmp_path / "s1", steps=2))
    s1.fit()
    cfg = tiny_config(2, tmp_path / "s2", steps=2, **{"ckpt.load_ckpt_info": {"path": str(tmp_path / "s1"),
                                                                             "content": ["model"]}})
    s2 = make_trainer(cfg)
    for name, p in s1.meta.student.state_dict().items():
        assert torch.equal(s2.meta.student.state_dict()[name], p), name
    for name, p in s1.meta.teacher.state_dict().items():
        assert torch.equal(s2.meta.teacher.state_dict()[name], p), name
    new = [k for k in s2.meta.student.state_dict() if k not in s1.meta.student.state_dict()]
    assert any(k.startswith("action_head") for k in new) and any(k.startswith("pred_head") for k in new)
    assert s2.progress.step == 0
    s2.fit()


def _strict_json_rows(path) -> list[dict]:
    def reject(token):
        raise AssertionError(f"{path}: {token} is not JSON")

    with open(path) as f:
        return [json.loads(line, parse_constant=reject) for line in f if line.strip()]


def test_runaway_run_stops_after_consecutive_skipped_steps(tmp_path):
    """lr=1e30 blows the weights up: every later step has NaN gradients. The run stops after
    hybrid_zero_optimizer.max_consecutive_skipped_steps of them, and metrics.jsonl stays valid JSON."""
    cfg = tiny_config(1, tmp_path, steps=12, **{"adam.lr": 1e30,
                                                "hybrid_zero_optimizer.max_consecutive_skipped_steps": 3})
    trainer = make_trainer(cfg)
    with pytest.raises(RunawayTrainingError, match="3 consecutive steps"):
        trainer.fit()
    applied = [h["update_applied"] for h in trainer.history]
    assert applied[-3:] == [0.0, 0.0, 0.0] and 1.0 in applied and len(applied) < 12
    rows = _strict_json_rows(tmp_path / "metrics.jsonl")
    assert len(rows) == len(applied) and rows[-1]["grad_norm"] is None and rows[0]["grad_norm"] > 0


def test_fp16_run_stops_when_the_loss_scale_is_at_its_minimum(tmp_path):
    cfg = tiny_config(2, tmp_path, steps=12, **{
        "model.dtype": "torch.float16", "teacher.dtype": "torch.float16", "adam.lr": 1e30,
        "grad_scaler.hysteresis": 1, "grad_scaler.fp16.initial_scale": 4.0, "grad_scaler.fp16.min_scale": 1.0})
    trainer = make_trainer(cfg)
    with pytest.raises(RunawayTrainingError, match=r"grad_scaler.fp16.min_scale=1"):
        trainer.fit()
    # scale 4, 2 and 1 overflowed; the overflow at 1 stopped the run
    assert [h["loss_scale"] for h in trainer.history if not h["update_applied"]][-3:] == [2.0, 1.0, 1.0]
    assert trainer.progress.skipped_steps == 3


@pytest.mark.parametrize("stage, backend, reason", [(1, "flash", "flash-attn package is not installed"),
                                                    (2, "flex", "no backward pass on the CPU")])
def test_attention_backend_that_cannot_train_stops_at_start_up(tmp_path, stage, backend, reason):
    """Raised by the constructor: before the model is built and long before the data is indexed."""
    cfg = tiny_config(stage, tmp_path, **{"model.attn_backend": backend})
    with pytest.raises(AttentionBackendError, match=reason):
        make_trainer(cfg)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A stage-1 run with complete checkpoints at steps 2 and 4, and its per-step scalars."""
    folder = tmp_path_factory.mktemp("two_checkpoints")
    history = make_trainer(tiny_config(1, folder, steps=4, **{"ckpt.checkpoint_every": 2})).fit()
    assert complete_steps(str(folder)) == [2, 4]
    return folder, history


CHECKPOINT_FILES = {"sharded state": "train_state/__0_0.distcp", "rng": "rng/rank0.pt", "meta": "meta.json",
                    "weights": "teacher_tp0_pp0.pt"}


@pytest.mark.parametrize("which", sorted(CHECKPOINT_FILES))
def test_corrupt_file_in_a_complete_checkpoint_falls_back_to_the_previous_one(tmp_path, two_checkpoints, which,
                                                                              caplog):
    source, history = two_checkpoints
    run = tmp_path / "run"
    shutil.copytree(source, run)
    path = run / "4" / CHECKPOINT_FILES[which]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    cfg = tiny_config(1, run, steps=4, **{"ckpt.checkpoint_every": 2})

    strict = copy.deepcopy(cfg)
    strict.ckpt.fallback_on_corrupt = False
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(path))):
        make_trainer(strict)
    with caplog.at_level(logging.WARNING):
        resumed = make_trainer(cfg)
    assert resumed.progress.step == 2
    assert any(str(path) in r.getMessage() and f"previous complete checkpoint {run / '2'}" in r.getMessage()
               for r in caplog.records)
    assert complete_steps(str(run)) == [2] and (run / "4.corrupt" / CHECKPOINT_FILES[which]).is_file()
    assert [h["loss"] for h in resumed.fit()] == [h["loss"] for h in history[2:]]  # exactly the original run
    assert complete_steps(str(run)) == [2, 4]


def _sample_ids(folder) -> list[list[int]]:
    with open(os.path.join(folder, "samples_rank0.jsonl")) as f:
        return [json.loads(line)["sample_ids"] for line in f if line.strip()]


def test_bad_files_are_reported_once_and_replaced_the_same_after_resume(tmp_path, synthetic_world, caplog):
    """12 images, 2 of them truncated, 3 epochs through 2 loader workers: 2 bad files, warned about once each (also
    across a resume), and the replacements are the same with and without the resume."""
    root = tmp_path / "images"
    for cls in sorted((synthetic_world.imagefolder / "train").iterdir())[:2]:
        (root / cls.name).mkdir(parents=True)
        for image in sorted(cls.iterdir())[:6]:
            shutil.copy(image, root / cls.name)
    bad = sorted(root.glob("*/*.jpg"))[1::7]
    for path in bad:
        path.write_bytes(path.read_bytes()[:300])
    opts = {"data.dataset_type": "ImgNetDINO", "data.train_folder": [str(root)], "data.num_workers": 2,
            "monitor.record_sample_ids": True}
    with caplog.at_level(logging.WARNING):
        straight = make_trainer(tiny_config(1, tmp_path / "straight", steps=9, **opts))
        straight.fit()
        cfg = tiny_config(1, tmp_path / "resumed", steps=9, **opts, **{"ckpt.checkpoint_every": 4})
        make_trainer(cfg).fit(max_iterations=4)
        resumed = make_trainer(copy.deepcopy(cfg))
        resumed.fit()
    assert straight.progress.bad_samples == resumed.progress.bad_samples == len(bad) == 2
    for path in bad:  # once in the straight run, once in the interrupted one
        assert sum(str(path) in r.getMessage() for r in caplog.records) == 2, str(path)
    ids = _sample_ids(tmp_path / "straight")
    assert ids == _sample_ids(tmp_path / "resumed") and len(ids) == 9
    bad_index = [straight_index for straight_index, p in enumerate(sorted(root.glob("*/*.jpg"))) if p in bad]
    assert not set(bad_index) & {i for step in ids for i in step}  # every draw of a bad file was replaced


def test_stage2_takes_the_representation_centre_of_stage1(tmp_path):
    s1 = make_trainer(tiny_config(1, tmp_path / "s1", steps=2))
    s1.fit()
    assert float(s1.meta.rep_center.abs().max()) > 0
    cfg = tiny_config(2, tmp_path / "s2", steps=2, **{"ckpt.load_ckpt_info": {"path": str(tmp_path / "s1"),
                                                                             "content": ["model"]}})
    s2 = make_trainer(cfg)
    assert torch.equal(s2.meta.rep_center, s1.meta.rep_center)
    assert not s2.meta.pred_center.any()  # the prediction target's centre is new in stage 2



def test_an_initialisation_that_does_not_fit_names_its_folder(tmp_path, caplog):
    """ckpt.load_ckpt_info content ("model",): a stage-2 checkpoint has parts a stage-1 model lacks (unexpected
    keys); the error names the key, the step folder and what was wrong. A weights-only checkpoint has no centres."""
    s2 = EgoAgentMetaArch(tiny_config(2, tmp_path / "a"))
    folder = save_weights_only(str(tmp_path / "s2"), s2.student, s2.teacher, s2.cfg, 0)
    source = read_init_source(str(tmp_path / "s2"))
    assert source.folder == folder and source.centers is None
    with pytest.raises(ValueError, match=rf"ckpt.load_ckpt_info: {re.escape(folder)} \(model\) does not fit this "
                                         r"model: missing \[\], unexpected \['action_query'"):
        EgoAgentMetaArch(tiny_config(1, tmp_path / "b")).init_from(source.folder, source.student_state,
                                                                    source.teacher_state, source.centers)
    fresh = EgoAgentMetaArch(tiny_config(2, tmp_path / "c"))
    with caplog.at_level(logging.INFO, logger="internlm.train.meta_arch"):
        fresh.init_from(source.folder, source.student_state, source.teacher_state, source.centers)
    assert f"{folder} holds weights only: the representation centre starts at 0" in caplog.text
    assert not fresh.rep_center.any()
    for (name, p), q in zip(fresh.teacher.state_dict().items(), s2.teacher.state_dict().values()):
        assert torch.equal(p, q), name

def test_residual_prediction_starts_at_the_copy_loss(tmp_path):
    """model.prediction_residual (the demo): the first L_pred is exactly that of the copy prediction of the teacher's
    frame t; the paper's fresh predictor is elsewhere."""
    g = torch.Generator().manual_seed(0)
    B, T = 3, 4
    chunk = {"global_crops": torch.randn(B, 2, 3, 32, 32, generator=g),
             "local_crops": torch.randn(B, 2, 3, 16, 16, generator=g),
             "frames": torch.randn(B, T, 3, 32, 32, generator=g), "poses": torch.rand(B, T, 4, 5, 17, generator=g),
             "camera_motion": torch.cat([torch.eye(3).flatten().expand(B, T, 9), torch.zeros(B, T, 3)], dim=2),
             "focal": torch.full((B,), 14.0)}
    losses = {}
    for residual in (True, False):
        cfg = tiny_config(2, tmp_path, **{"model.prediction_residual": residual,
                                          "teacher.prediction_residual": residual,
                                          "model.prediction_reprojection": False,
                                          "teacher.prediction_reprojection": False})
        torch.manual_seed(0)
        meta = EgoAgentMetaArch(cfg)
        meta.pred_center.normal_()  # a centre that is not zero must enter the base
        state = meta.begin_step(chunk)
        meta.chunk_loss(chunk, state, cfg.loss.teacher_temp, 1.0)
        losses[residual] = float(state.stats[STAT_NAMES.index("loss_pred")])
        if residual:
            with torch.no_grad():
                t_frames = meta.teacher.represent(chunk["frames"].flatten(0, 1)).logits.view(B, T, -1)
                base = prediction_minimiser(t_frames, meta.pred_center, cfg.loss.teacher_temp, cfg.loss.student_temp)
                want = prediction_loss(base, t_frames, meta.pred_center, cfg.loss.teacher_temp,
                                       cfg.loss.student_temp)
            assert losses[True] == pytest.approx(float(want), rel=1e-5)
    assert abs(losses[True] - losses[False]) > 1e-2


def test_freeze_last_layer_for_the_first_steps(tmp_path):
    trainer = make_trainer(tiny_config(1, tmp_path, steps=4, **{"loss.freeze_last_layer_steps": 2}))
    student = trainer.meta.student

    def last_layers():
        return {n: p.detach().clone() for n, p in student.named_parameters() if ".last_layer." in n}

    start, mlp_start = last_layers(), student.rep_head.mlp[0].weight.detach().clone()
    trainer.fit(max_iterations=2)
    assert all(torch.equal(start[n], p) for n, p in last_layers().items()) and start
    assert not torch.equal(mlp_start, student.rep_head.mlp[0].weight)  # the rest of the head learns
    trainer.fit(max_iterations=1)  # step 3: the prototypes move
    trained = [n for n, p in student.named_parameters() if ".last_layer." in n and p.requires_grad]
    assert trained and all(not torch.equal(start[n], p) for n, p in last_layers().items() if n in trained)


def test_validation_every_n_steps_changes_nothing(tmp_path):
    cfg = tiny_config(2, tmp_path, steps=4, **{"data.valid_every": 2, "data.valid_micro_num": 3})
    trainer = make_trainer(cfg)
    history = trainer.fit()
    with_val = [h["step"] for h in history if "val_loss" in h]
    assert with_val == [2, 4]
    last = history[-1]
    w = cfg.loss
    want = (w.rep_weight * last["val_loss_rep"] + w.pred_weight * last["val_loss_pred"]
            + w.act_weight * last["val_loss_act"])
    assert last["val_loss"] == pytest.approx(want, rel=1e-9)
    before = flat_state(trainer).clone()
    again = trainer.validate()
    assert torch.equal(flat_state(trainer), before)  # no teacher or centre update
    assert again == {k: v for k, v in last.items() if k.startswith("val_")}  # the same crops every time


def test_teacher_runs_with_its_own_dtype_and_attention_backend(tmp_path):
    cfg = tiny_config(2, tmp_path, steps=2, **{"teacher.dtype": "torch.bfloat16", "teacher.attn_backend": "flex"})
    trainer = make_trainer(cfg)
    meta = trainer.meta
    assert meta.teacher.backbone.kernel.backend == "flex" and meta.student.backbone.kernel.backend == "sdpa"
    seen = {}
    for name, model in (("teacher", meta.teacher), ("student", meta.student)):
        model.backbone.blocks[0].register_forward_hook(lambda m, i, out, name=name: seen.update({name: out.dtype}))
    trainer.fit(max_iterations=1)  # flex has no CPU backward: only the teacher, which runs without gradients
    assert seen == {"teacher": torch.bfloat16, "student": torch.float32}


def test_beta2_schedule_and_teacher_checkpoint_folder(tmp_path):
    cfg = tiny_config(1, tmp_path / "run", steps=3, **{
        "adam.adam_beta2_c": 2.0, "beta2_scheduler": {"init_beta2": 0.5, "c": 2.0},
        "ckpt.save_teacher_ckpt_folder": str(tmp_path / "teacher"), "ckpt.checkpoint_every": 3})
    trainer = make_trainer(cfg)
    history = trainer.fit()
    # InternLM: the first step adam.adam_beta2, then max(init_beta2, 1 - k^-c) after k steps
    assert [h["beta2"] for h in history] == [0.999, 0.5, 0.75]
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.75)
    linked, own = tmp_path / "teacher" / "3" / "teacher_tp0_pp0.pt", tmp_path / "run" / "3" / "teacher_tp0_pp0.pt"
    assert linked.read_bytes() == own.read_bytes()


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tmp_path):
    """model.compile=True (torch.compile of every block, inductor on this CPU): three stage-2 steps give the losses
    and the weights of the eager run, to float32 rounding."""
    runs = {}
    for compiled in (False, True):
        trainer = make_trainer(tiny_config(2, tmp_path / str(compiled), steps=3, **{"model.compile": compiled}))
        history = trainer.fit()
        runs[compiled] = ([h["loss"] for h in history], flat_state(trainer))
    blocks = [m for m in trainer.meta.student.modules() if isinstance(m, InternLMBlock)]
    assert blocks and all(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl is not None for b in blocks)
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-4)
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_accumulation_splits_the_step_and_keeps_its_update(tmp_path, stage):
    """data.gradient_accumulation = k: the step's batch goes through the model in k chunks of micro_num / k samples
    (activation memory), and the update is the one of the whole batch at once (to fp32 rounding)."""
    runs = {}
    for accum in (1, 2, 4):
        trainer = make_trainer(tiny_config(stage, tmp_path / f"accum{accum}", steps=2, micro_num=4, accum=accum))
        sizes, chunk_loss = [], trainer.meta.chunk_loss

        def recording(part, *args, sizes=sizes, chunk_loss=chunk_loss, **kwargs):
            sizes.append(next(v for v in part.values() if torch.is_tensor(v)).shape[0])
            return chunk_loss(part, *args, **kwargs)

        trainer.meta.chunk_loss = recording
        history = trainer.fit(max_iterations=1)
        runs[accum] = (sizes, history[0]["loss"], [p.detach().clone() for p in trainer.meta.student.parameters()])
    for accum, (sizes, loss, weights) in runs.items():
        assert sizes == [4 // accum] * accum, (accum, sizes)
        assert loss == pytest.approx(runs[1][1], rel=1e-5, abs=1e-6)
        for a, b in zip(weights, runs[1][2]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_train_step_after_a_preempted_fit_does_not_stop_again(tmp_path, monkeypatch):
    """fit's pre-emption flag belongs to fit: once it has saved and stopped, a later train_step (a user's own loop,
    an evaluation script) no longer reads the old signal as a stop request."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # no requeue
    trainer = make_trainer(tiny_config(1, tmp_path, steps=50))
    kept = []

    def signalling_loader(cfg, ctx, consumed):
        for i, batch in enumerate(_default_loader_factory(cfg, ctx, consumed)):
            kept.append(batch)
            if i == 1:
                os.kill(os.getpid(), signal.SIGUSR1)  # what slurm sends before the end of a job's time
            yield batch

    trainer.loader_factory = signalling_loader
    trainer.fit()
    assert trainer.stop_reason is StopRequest.PREEMPTION and complete_steps(str(tmp_path)) == [2]
    trainer.train_step(kept[0])
    assert trainer._stop_agreed is None
