"""Losses, schedules and the loss scaler against direct, written-out references."""

import math

import numpy as np
import pytest
import torch

from internlm.config import load_config
from internlm.config.schema import FP16ScalerConfig, GradScalerConfig
from internlm.solver.grad_scaler import DynamicLossScaler
from internlm.solver.schedules import Schedules
from internlm.train.losses import action_loss, dino_multicrop_loss, prediction_loss


def reference_dino(student, teacher, center, t_temp, s_temp):
    """The DINO loss as a double loop over (teacher view, student view) pairs and samples, in float64."""
    total, pairs = 0.0, 0
    for it, t in enumerate(teacher):
        for iv, s in enumerate(student):
            if it == iv:
                continue
            for b in range(t.shape[0]):
                q = np.exp((t[b] - center) / t_temp)
                q /= q.sum()
                logp = s[b] / s_temp - np.log(np.exp(s[b] / s_temp).sum())
                total += -(q * logp).sum() / t.shape[0]
            pairs += 1
    return total / pairs


def test_dino_loss_equals_double_loop():
    rng = np.random.default_rng(0)
    B, K = 5, 37
    student = [rng.normal(size=(B, K)) for _ in range(8)]
    teacher = [rng.normal(size=(B, K)) for _ in range(2)]
    center = rng.normal(size=K) * 0.1
    got = dino_multicrop_loss([torch.tensor(s, dtype=torch.float64) for s in student],
                              [torch.tensor(t, dtype=torch.float64) for t in teacher],
                              torch.tensor(center), 0.04, 0.1)
    want = reference_dino(student, teacher, center, 0.04, 0.1)
    assert abs(float(got) - want) < 1e-6 * max(1.0, abs(want))


def test_center_update_formula():
    from internlm.train.meta_arch import EgoAgentMetaArch

    cfg = load_config("configs/demo/stage1_dino_tiny.py", [("model.num_layers", 1), ("teacher.num_layers", 1)])
    meta = EgoAgentMetaArch(cfg)
    K = cfg.model.output_dim
    c0 = torch.randn(K)
    meta.rep_center.copy_(c0)
    logits = torch.randn(12, K)
    meta.update_centers(logits.sum(0), 12, None, 0)
    m = cfg.loss.center_momentum
    torch.testing.assert_close(meta.rep_center, m * c0 + (1 - m) * logits.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(meta.pred_center, torch.zeros(K), rtol=0, atol=0)  # stage 1 has no prediction target


def test_prediction_loss_pairs_step_t_with_frame_t_plus_1():
    rng = np.random.default_rng(1)
    B, T, K = 3, 4, 11
    s, t, c = rng.normal(size=(B, T, K)), rng.normal(size=(B, T, K)), rng.normal(size=K)
    got = prediction_loss(torch.tensor(s), torch.tensor(t), torch.tensor(c), 0.04, 0.1)
    terms = []
    for b in range(B):
        for k in range(T - 1):  # step k predicts frame k + 1
            q = np.exp((t[b, k + 1] - c) / 0.04)
            q /= q.sum()
            logp = s[b, k] / 0.1 - np.log(np.exp(s[b, k] / 0.1).sum())
            terms.append(-(q * logp).sum())
    want = np.mean(terms)
    assert abs(float(got) - want) < 1e-6 * abs(want)  # the loss is computed in fp32


def test_action_loss_masks_invisible_joints():
    poses = torch.zeros(1, 2, 4, 5, 17)
    poses[:, :, 3] = 1.0
    poses[0, 1, 3, 2, 7] = 0.0  # one invisible joint in one frame
    poses[0, 1, :3, 2, 7] = -1.0
    pred = torch.zeros_like(poses)
    pred[0, 0, 0, 0, 0] = 0.3  # an error of 0.3 on one visible element
    pred[0, 1, :3, 2, 7] = 100.0  # a huge error on the invisible joint: ignored
    pred[0, 0, 3] = 55.0  # the visibility channel is not a regression target
    visible = 2 * 5 * 17 * 3 - 3
    assert abs(float(action_loss(pred, poses)) - 0.3 / visible) < 1e-9


def test_schedules_closed_form():
    cfg = load_config("configs/joint_train/lr6e-04_tmp004_300m.py")
    s = Schedules.from_config(cfg)
    total, warmup = 72000, 1800
    first, end_warm, last = s.at(0), s.at(warmup - 1), s.at(total - 1)
    assert first.lr == pytest.approx(6e-4 / warmup)
    assert end_warm.lr == pytest.approx(6e-4)
    assert s.at(warmup).lr == pytest.approx(6e-4)
    assert last.lr == pytest.approx(cfg.lr_scheduler.eta_min)
    mid = warmup + (total - 1 - warmup) // 2
    assert s.at(mid).lr == pytest.approx(cfg.lr_scheduler.eta_min + (6e-4 - cfg.lr_scheduler.eta_min) * 0.5 *
                                         (1 + math.cos(math.pi * (mid - warmup) / (total - 1 - warmup))))
    assert (first.weight_decay, last.weight_decay) == (pytest.approx(0.04), pytest.approx(0.4))
    assert s.at((total - 1) // 2).weight_decay == pytest.approx(0.22, abs=1e-4)
    assert (first.momentum, last.momentum) == (pytest.approx(0.996), pytest.approx(1.0))
    assert first.teacher_temp == last.teacher_temp == 0.04
    # a temperature warm-up: linear over warmup_teacher_temp_epochs of the loss.epochs "epochs"
    cfg2 = load_config("configs/dino_pretrain/lr5e-4_tmp004_300m.py",
                       [("loss.warmup_teacher_temp", 0.02), ("data.total_steps", 1010),
                        ("lr_scheduler.total_steps", 1010)])
    s2 = Schedules.from_config(cfg2)
    assert s2.temp_warmup_steps == 30  # 1010 * 3 / 101
    assert s2.at(0).teacher_temp == pytest.approx(0.02)
    assert s2.at(15).teacher_temp == pytest.approx(0.03)
    assert s2.at(30).teacher_temp == s2.at(1009).teacher_temp == pytest.approx(0.04)
    assert s2.at(0).lr == pytest.approx(5e-4 / 101)  # warmup_ratio 0.1 of 1010 steps


def test_loss_scaler_hysteresis_backoff_growth():
    cfg = GradScalerConfig(fp16=FP16ScalerConfig(initial_scale=1024, min_scale=1, growth_interval=3),
                           growth_factor=2, backoff_factor=0.5, max_scale=4096, hysteresis=2)
    s = DynamicLossScaler(cfg, enabled=True)
    s.update(found_inf=True)
    assert s.scale == 1024  # the first overflow is absorbed by the hysteresis
    s.update(found_inf=True)
    assert s.scale == 512
    s.update(found_inf=True)
    assert s.scale == 256  # budget spent: every further overflow halves
    for _ in range(3):
        s.update(found_inf=False)
    assert s.scale == 512  # growth after growth_interval clean steps, hysteresis restored
    s.update(found_inf=True)
    assert s.scale == 512
    state = s.state_dict()
    t = DynamicLossScaler(cfg, enabled=True)
    t.load_state_dict(state)
    assert t.state_dict() == state
    assert DynamicLossScaler(cfg, enabled=False).scale == 1.0


def test_logged_loss_is_the_trained_loss_with_any_weights(tmp_path):
    """One definition of L = w_rep L_rep + w_pred L_pred + w_act L_act serves the backward and the log."""
    from torch.utils.data import default_collate
    from train_helpers import tiny_config

    from internlm.data.build import build_train_dataset
    from internlm.train.meta_arch import EgoAgentMetaArch

    cfg = tiny_config(2, tmp_path, **{"loss.rep_weight": 0.5, "loss.pred_weight": 2.0, "loss.act_weight": 3.0})
    meta = EgoAgentMetaArch(cfg)
    ds = build_train_dataset(cfg.data, joint=True)
    batch = {k: v for k, v in default_collate([ds[i] for i in range(4)]).items() if torch.is_tensor(v)}
    state = meta.begin_step(batch)
    trained = meta.chunk_loss(batch, state, 0.04, 1.0)
    logged = meta.end_step(state, momentum=0.996, update=False)
    assert float(trained.detach()) == pytest.approx(logged["loss"], rel=1e-6)
    want = 0.5 * logged["loss_rep"] + 2.0 * logged["loss_pred"] + 3.0 * logged["loss_act"]
    assert logged["loss"] == pytest.approx(want, rel=1e-12) and logged["loss"] != pytest.approx(
        logged["loss_rep"] + logged["loss_pred"] + logged["loss_act"], rel=1e-3)
