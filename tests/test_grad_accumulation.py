"""Gradient accumulation fusion (parallel.grad_accumulation_fusion, internlm/parallel/grad_accumulation.py) and the
loss scale and clip folded into one factor, on the tiny stage-2 trainer: the gradients the optimizer sees equal
autograd's, across passes, accumulation chunks, recomputation and torch.compile; the buckets are reduced while the
backward runs. Two ranks on gloo: tests/test_distributed.py and tests/test_comm_hooks.py."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate
from train_helpers import make_trainer, tiny_config

from internlm.data.generated import GeneratedSamples
from internlm.parallel.grad_accumulation import AccumulatingLinear, fused_wgrad_available, fusion_wanted

BF16 = {"model.dtype": "torch.bfloat16", "teacher.dtype": "torch.bfloat16"}


def first_step_grads(tmp_path, fusion, steps: int = 1, **extra):
    """The student's gradients as the optimizer receives them at the first step (unscaled and clipped), the
    trainer, and its scalars."""
    cfg = tiny_config(2, tmp_path / f"run{len(list(tmp_path.iterdir()))}", accum=2,
                      **{"parallel.grad_accumulation_fusion": fusion, **extra})
    trainer = make_trainer(cfg)
    assert (trainer.plan.fusion is not None) == bool(fusion)
    batch = default_collate([GeneratedSamples(cfg.data, joint=True)[i] for i in range(cfg.data.micro_num)])
    seen = {}
    trainer.grad_storage = {}  # parameter -> the storage its .grad lived in at the step
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        if not seen:
            for name, p in trainer.meta.student.named_parameters():
                if p.grad is not None:
                    g = p.grad.detach().clone()
                    scale = getattr(trainer.optimizer, "grad_scale", None)  # a fused AdamW divides as it reads
                    seen[name] = g / scale if scale is not None else g
                    trainer.grad_storage[p] = p.grad.untyped_storage().data_ptr()
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    scalars = [trainer.train_step(batch) for _ in range(steps)]
    return seen, trainer, scalars


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("recompute", [0.0, 1.0])
def test_fused_gradients_equal_autograd_in_fp32(tmp_path, recompute):
    """Two chunks, several passes through each block (global crops, local crops, the joint sequence and its
    rollout): every gradient equals autograd's, and the blocks' weights hold views of the fusion's buffers."""
    ref, _, _ = first_step_grads(tmp_path, False, **{"model.checkpoint": recompute})
    got, trainer, _ = first_step_grads(tmp_path, True, **{"model.checkpoint": recompute})
    assert got.keys() == ref.keys()
    for name in ref:
        assert rel(got[name], ref[name]) < 1e-5, name
    fusion = trainer.plan.fusion
    linears = [m for m in trainer.meta.student.backbone.modules() if isinstance(m, AccumulatingLinear)]
    assert len(linears) == 5 * trainer.cfg.model.num_layers
    buffers = {f.untyped_storage().data_ptr() for f in fusion.flat}
    assert len(fusion.params) == 7 * trainer.cfg.model.num_layers  # 5 weights, 2 biases per block
    assert all(trainer.grad_storage[p] in buffers for p in fusion.params)
    assert "backbone.blocks.0.mixer.Wqkv.bias" in fusion.names


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_gradients_in_bf16_are_no_further_from_fp32(tmp_path, compiled):
    """Under bf16 autocast the fused path sums the passes and chunks in fp32 (autograd sums the passes in bf16):
    its block gradients are at least as close to an fp32 run's, the others the same; compiled blocks too."""
    ref, _, _ = first_step_grads(tmp_path, False)
    extra = {**BF16, "model.compile": compiled, "teacher.compile": compiled}
    plain, _, _ = first_step_grads(tmp_path, False, **extra)
    fused, _, _ = first_step_grads(tmp_path, True, **extra)
    fused_linears = [n for n in ref if ".blocks." in n and not n.endswith(("norm1.weight", "norm2.weight"))]
    for name in ref:
        if ref[name].norm() == 0:
            continue
        if name in fused_linears:  # each within the noise of bf16's upstream rounding
            assert rel(fused[name], ref[name]) <= 1.5 * rel(plain[name], ref[name]) + 1e-6, name
        else:
            assert rel(fused[name], plain[name]) < 2e-2, name
    # and together closer: the passes and chunks summed in fp32
    whole = {k: torch.cat([g[n].flatten() for n in fused_linears]) for k, g in (("ref", ref), ("plain", plain),
                                                                              ("fused", fused))}
    assert rel(whole["fused"], whole["ref"]) <= rel(whole["plain"], whole["ref"])


def test_buckets_are_reduced_during_the_backward_last_block_first(tmp_path):
    """With a bucket per block, each bucket is handed to the reduction from inside the last chunk's backward, as
    soon as its block's uses are done, the last block first (the order every rank follows)."""
    cfg = tiny_config(2, tmp_path, accum=2, **{"parallel.grad_accumulation_fusion": True,
                                             "hybrid_zero_optimizer.reduce_bucket_size": 1})
    trainer = make_trainer(cfg)
    fusion = trainer.plan.fusion
    assert [b for b in fusion.buckets] == [[1], [0]]
    events = []
    fusion.ready_callback = lambda names: events.append((names[0].split(".")[2],
                                                         torch._C._current_graph_task_id() != -1))
    batch = default_collate([GeneratedSamples(cfg.data, joint=True)[i] for i in range(cfg.data.micro_num)])
    trainer.train_step(batch)
    assert events == [("1", True), ("0", True)]


def test_loss_scale_and_clip_folded_into_one_factor(tmp_path):
    """Unscale and clip as one factor (divided by a fused AdamW as it reads, else one pass) give the update of
    unscaling then clipping: the same parameters after a clipped step at a loss scale of 1024."""
    after = {}
    for fused_adam, folded in ((False, False), (False, True), (True, True)):
        cfg = tiny_config(2, tmp_path / f"{fused_adam}{folded}", accum=2,
                          **{"adam.fused": fused_adam, "hybrid_zero_optimizer.clip_grad_norm": 0.05})
        trainer = make_trainer(cfg)
        trainer.scaler.scale = 1024.0
        batch = default_collate([GeneratedSamples(cfg.data, joint=True)[i] for i in range(cfg.data.micro_num)])
        saved = torch.nn.utils.get_total_norm
        if not folded:  # the two-pass path (torch < 2.6 and FSDP2 take it)
            del torch.nn.utils.get_total_norm
        try:
            scalars = trainer.train_step(batch)
        finally:
            torch.nn.utils.get_total_norm = saved
        assert scalars["grad_norm"] > 0.05  # the clip is active
        after[(fused_adam, folded)] = torch.cat([p.detach().flatten() for p in trainer.meta.student.parameters()])
    base = after[(False, False)]
    for key, value in after.items():
        torch.testing.assert_close(value, base, rtol=1e-5, atol=1e-6, msg=str(key))


def test_fusion_is_on_where_it_pays():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not fusion_wanted(None, cpu, torch.bfloat16, "ddp")  # the fallback moves more bytes than autograd
    assert not fusion_wanted(None, cuda, None, "ddp")  # fp32: nothing to cast, nothing to gain
    assert not fusion_wanted(None, cuda, torch.float16, "fsdp")
    assert fusion_wanted(True, cpu, None, "single") and not fusion_wanted(False, cuda, torch.float16, "ddp")
    assert fusion_wanted(None, cuda, torch.float16, "ddp") == fused_wgrad_available()
    with pytest.raises(ValueError, match="FSDP2"):
        fusion_wanted(True, cuda, torch.float16, "fsdp")


@pytest.mark.parametrize("fused_adam", [False, True])
def test_weights_are_cast_once_per_step_from_the_updated_weights(tmp_path, fused_adam):
    """The blocks' weights are cast once per step and kept for its chunks: every cast a block uses equals its
    current weights, also after a fused AdamW (which updates them without bumping their version counters)."""
    cfg = tiny_config(2, tmp_path, accum=2, **BF16, **{"parallel.grad_accumulation_fusion": True,
                                                       "adam.fused": fused_adam})
    trainer = make_trainer(cfg)
    backbone = trainer.meta.student.backbone
    cast, made, stale, current = backbone._cast_weights, [], [], {"step": 0}

    def checked_cast(i, detached):
        out = cast(i, detached)
        weights = dict(backbone.blocks[i].named_parameters())
        stale.append(max((c.float() - weights[n].detach().to(c.dtype).float()).abs().max().item()
                         for n, c in out.items()))
        made.append((current["step"], id(out)))
        return out

    backbone._cast_weights = checked_cast
    batch = default_collate([GeneratedSamples(cfg.data, joint=True)[i] for i in range(cfg.data.micro_num)])
    for step in range(3):
        current["step"] = step
        trainer.train_step(batch)
    assert max(stale) == 0.0
    for step in range(3):  # one cast per block per step, whatever the chunks and passes
        assert len({cast_id for s, cast_id in made if s == step}) == cfg.model.num_layers


@pytest.mark.parametrize("setting", [None, True])
def test_a_fused_gemm_that_fails_on_the_device_turns_fusion_off_or_stops(tmp_path, monkeypatch, caplog, setting):
    """Where torch has the fused GEMM but it fails on the GPU (probed at start-up), the default goes without fusion
    and says why; a forced fusion stops with the reason."""
    from internlm.parallel import data_parallel

    cfg = tiny_config(2, tmp_path, **BF16, **{"parallel.grad_accumulation_fusion": setting})
    trainer = make_trainer(cfg)  # CPU: no fusion by default; the plan is re-applied below as on a GPU
    plan = data_parallel.DataParallelPlan(cfg.parallel, 1, torch.device("cuda"))
    monkeypatch.setattr(data_parallel, "fusion_wanted", lambda *args: True)
    monkeypatch.setattr(data_parallel, "fused_wgrad_problem", lambda device: "planted: no such kernel")
    if setting:
        with pytest.raises(RuntimeError, match="planted: no such kernel; set it to False"):
            plan.apply(trainer.meta, 2**20)
        return
    with caplog.at_level("WARNING"):
        plan.apply(trainer.meta, 2**20)
    assert plan.fusion is None and "gradient accumulation fusion off" in caplog.text
    assert "planted: no such kernel" in caplog.text
