"""torch.compile of the transformer blocks (the GPU default; compile runs on the CPU too): the same numbers as
eager, and a dynamo cache that holds every block shape a run feeds it."""

from __future__ import annotations

import pytest
import torch
from test_model import clip, tiny_cfg
from train_helpers import make_trainer, tiny_config

from internlm.model import EgoAgent
from internlm.parallel.compile import block_call_shapes, compile_blocks, compile_enabled, recompile_budget


def test_compile_is_the_default_on_cuda_only(tmp_path):
    cfg = tiny_config(2, tmp_path)
    assert cfg.model.compile is None
    assert compile_enabled(cfg, torch.device("cuda", 0)) and not compile_enabled(cfg, torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_compiled_blocks_match_eager(dtype):
    """Inductor fuses the fp32 RMSNorm and the rotary embedding into the blocks' kernels: outputs and gradients
    stay those of eager within bf16 rounding, with one block recomputed and the weights cast once per forward
    (fp32 through the trainer: tests/test_training.py)."""
    torch.manual_seed(0)
    frames, poses = clip()
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = EgoAgent(tiny_cfg(checkpoint=0.5, attn_backend="sdpa"), joint=True).train()
        if compiled:
            assert compile_blocks(model) == 2
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = model(views=[frames[:, 0]], frames=frames, poses=poses)  # one block checkpointed
        loss = out.joint.actions.float().square().mean() + out.views[0].logits.float().logsumexp(-1).mean()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out.joint.actions.float(), out.views[0].feature.float(), grads))
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=tol, atol=tol)


def test_recompile_budget_covers_every_shape_of_a_run(tmp_path):
    """Training chunks, validation batches and both models feed the blocks more shapes than dynamo's default cache
    (8 entries per code object); with the budget the run never falls back to eager (dynamo is told to fail
    instead), and with half of it the same run does fail."""
    import torch._dynamo

    cfg = tiny_config(2, tmp_path / "run", steps=2, micro_num=6, **{"data.valid_every": 1})
    shapes = block_call_shapes(cfg)
    assert len(shapes) > 8
    config = torch._dynamo.config
    limit_name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    fail_name = "fail_on_recompile_limit_hit" if hasattr(config, "fail_on_recompile_limit_hit") \
        else "fail_on_cache_limit_hit"
    for limit, should_fail in ((recompile_budget(cfg), False), (len(shapes) // 2, True)):
        torch._dynamo.reset()
        trainer = make_trainer(tiny_config(2, tmp_path / f"run{limit}", steps=2, micro_num=6,
                                           **{"data.valid_every": 1}))
        with torch._dynamo.config.patch({limit_name: limit, fail_name: True}):
            compile_blocks(trainer.meta, backend="aot_eager")  # dynamo's cache is the same for every backend
            if should_fail:
                with pytest.raises(Exception, match="(?i)limit"):
                    trainer.fit()
            else:
                history = trainer.fit()
                assert len(history) == 2 and "val_loss" in history[-1]
    torch._dynamo.reset()
