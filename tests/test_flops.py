"""The analytic FLOP count used for TFLOP/s and MFU, against torch.utils.flop_counter on a real step."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from train_helpers import tiny_config

from internlm.model.attention import MaskLayout
from internlm.model.flops import allowed_pairs, sample_cost
from internlm.train.meta_arch import EgoAgentMetaArch


def test_allowed_pairs():
    assert allowed_pairs(MaskLayout("full", 5)) == 25
    assert allowed_pairs(MaskLayout("causal", 5)) == 15
    # blocks of 3 and 2 tokens add their upper triangles: 3 + 1
    assert allowed_pairs(MaskLayout("block_causal", 7, ((0, 3), (4, 6)))) == 28 + 4


@pytest.mark.parametrize("stage, reprojection", [(1, False), (2, True), (2, False)])
def test_train_step_flops_match_the_flop_counter(tmp_path, stage, reprojection):
    extra = {} if stage == 1 else {"model.prediction_reprojection": reprojection,
                                   "teacher.prediction_reprojection": reprojection}
    cfg = tiny_config(stage, tmp_path, **{"model.hidden_size": 64, "teacher.hidden_size": 64,
                                          "model.num_attention_heads": 4, "teacher.num_attention_heads": 4, **extra})
    torch.manual_seed(0)
    meta = EgoAgentMetaArch(cfg)
    from torch.utils.data import default_collate

    from internlm.data.build import build_train_dataset

    B = 3
    ds = build_train_dataset(cfg.data, joint=cfg.loss.is_joint)
    batch = default_collate([ds[i] for i in range(B)])
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    state = meta.begin_step(batch)
    # the math SDPA kernel is made of matmuls the counter sees (it has no entry for the fused CPU kernels)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        loss = meta.chunk_loss(batch, state, 0.04, 1.0)
        loss.backward()
    measured = counter.get_total_flops()
    # the math kernel computes the full L x L square whatever the mask
    want = sample_cost(cfg.model, cfg.sample_shapes(), dense_attention=True).train_flops * B
    # what remains uncounted by either: softmax, norms and other elementwise work
    assert abs(measured - want) / want < 0.005, (measured, want)
    shapes = cfg.sample_shapes()
    dense = sample_cost(cfg.model, shapes, dense_attention=True)
    assert sample_cost(cfg.model, shapes).train_flops <= dense.train_flops
