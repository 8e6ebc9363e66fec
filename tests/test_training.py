"""The training engine: EMA teacher, exact resume, fp16 overflow handling, atomic checkpoints, stage-2 init."""

import copy
import os

import pytest
import torch
from train_helpers import flat_state, make_trainer, tiny_config

from internlm.checkpoint.layout import MARKER, complete_steps, latest_checkpoint


def test_teacher_is_the_ema_of_the_student(tmp_path):
    trainer = make_trainer(tiny_config(2, tmp_path, steps=4))
    meta = trainer.meta
    teacher_before = [p.detach().clone() for p in meta.teacher.parameters()]
    trainer.fit(max_iterations=1)
    m = trainer.schedules.at(0).momentum
    assert 0.99 <= m < 1.0
    for before, t, s in zip(teacher_before, meta.teacher.parameters(), meta.student.parameters()):
        torch.testing.assert_close(t, m * before + (1 - m) * s, rtol=0, atol=1e-7)
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


def test_interrupted_save_is_ignored(tmp_path):
    cfg = tiny_config(1, tmp_path, steps=4, **{"ckpt.checkpoint_every": 2})
    trainer = make_trainer(cfg)
    trainer.fit()
    assert complete_steps(str(tmp_path)) == [2, 4]
    os.remove(tmp_path / "4" / MARKER)  # as if the process died while writing step 4
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "2")
    resumed = make_trainer(copy.deepcopy(cfg))
    assert resumed.progress.step == 2
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


def test_stage2_takes_the_representation_centre_of_stage1(tmp_path):
    s1 = make_trainer(tiny_config(1, tmp_path / "s1", steps=2))
    s1.fit()
    assert float(s1.meta.rep_center.abs().max()) > 0
    cfg = tiny_config(2, tmp_path / "s2", steps=2, **{"ckpt.load_ckpt_info": {"path": str(tmp_path / "s1"),
                                                                             "content": ["model"]}})
    s2 = make_trainer(cfg)
    assert torch.equal(s2.meta.rep_center, s1.meta.rep_center)
    assert not s2.meta.pred_center.any()  # the prediction target's centre is new in stage 2


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
