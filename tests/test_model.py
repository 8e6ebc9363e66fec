"""The EgoAgent model: causality of the joint branch, the block-causal mask, attention backends, RoPE, sizes."""

import math

import pytest
import torch

from internlm.config import load_config
from internlm.config.schema import ConvStemConfig, LVMConfig, ModelConfig
from internlm.model import AttentionBackendError, EgoAgent, MaskLayout
from internlm.model.attention import AttentionKernel, check_backend
from internlm.model.modeling_internlm import backbone_param_count
from internlm.model.param_count import count_parameters
from internlm.model.rotary import RotaryEmbedding
from internlm.train.prediction_base import ResidualPrediction


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(hidden_size=64, num_layers=2, num_attention_heads=4, output_dim=96, head_hidden_dim=64,
                head_bottleneck_dim=32,
                lvm_config=LVMConfig(conv_stem_config=ConvStemConfig(img_size=16, patch_size=8)))
    base.update(kw)
    return ModelConfig(**base)


def clip(B=2, T=4, P=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 3, P, P, generator=g), torch.randn(B, T, 4, 5, 17, generator=g)


@pytest.fixture(params=["sdpa", "flex"])
def joint_model(request):
    torch.manual_seed(0)
    model = EgoAgent(tiny_cfg(attn_backend=request.param), joint=True).eval()
    with torch.no_grad():  # FlexAttention has no CPU backward
        yield model


def test_action_query_sees_only_the_past(joint_model):
    frames, poses = clip()
    base = joint_model.forward_joint(frames, poses)
    for t in range(3):
        later_frames = frames.clone()
        later_frames[:, t + 1] = torch.randn_like(later_frames[:, t + 1])  # the image of frame t+1
        same_step_poses = poses.clone()
        same_step_poses[:, t] = torch.randn_like(same_step_poses[:, t])  # the poses of step t
        for f, p in ((later_frames, poses), (frames, same_step_poses)):
            out = joint_model.forward_joint(f, p)
            torch.testing.assert_close(out.actions[:, :t + 1], base.actions[:, :t + 1], rtol=0, atol=1e-6)
        # ... while the future-state query of step t does see the poses of step t
        out = joint_model.forward_joint(frames, same_step_poses)
        assert (out.future_feature[:, t] - base.future_feature[:, t]).abs().max() > 1e-3
        # and the action query of step t+1 sees them too
        assert (out.actions[:, t + 1] - base.actions[:, t + 1]).abs().max() > 1e-4


def _visible_poses(seed: int = 1, B: int = 2, T: int = 4) -> torch.Tensor:
    """(B, T, 4, 5, 17) metres-scale poses, a few joints invisible (-1, visibility 0)."""
    g = torch.Generator().manual_seed(seed)
    poses = torch.cat([torch.randn(B, T, 3, 5, 17, generator=g) * 0.3 + 1.0, torch.ones(B, T, 1, 5, 17)], dim=2)
    poses[:, :, 3, 3:, 0] = 0.0  # joint 0 unseen in the last two frames of every step
    poses[:, :, 3, :, 1] = 0.0  # joint 1 never seen
    poses[:, :, :3][poses[:, :, 3:4].expand(-1, -1, 3, -1, -1) == 0] = -1.0
    return poses


def test_residual_action_head_starts_at_the_last_observed_pose():
    torch.manual_seed(0)
    mean, std = torch.randn(3, 17), torch.rand(3, 17) + 0.5
    for normalize in (False, True):
        model = EgoAgent(tiny_cfg(action_residual=True, pose_normalization=normalize), joint=True).eval()
        if normalize:
            model.action_projector.set_pose_statistics(mean, std)
        frames, _ = clip()
        poses = _visible_poses()
        with torch.no_grad():
            actions = model.forward_joint(frames, poses).actions  # (2, 4, 4, 5, 17)
        # zero-initialised offsets: step t predicts, for all 5 frames, the last pose seen in step t - 1
        for t in (1, 2, 3):
            prev = poses[:, t - 1]
            want = prev[:, :3, 2].clone()  # joint 0: last seen in frame 2
            want[:, :, 2:] = prev[:, :3, 4, 2:]  # the other seen joints: frame 4
            seen = torch.tensor([0] + list(range(2, 17)))
            want[:, :, 1] = want[:, :, seen].mean(-1)  # never seen: the centre of the seen joints
            torch.testing.assert_close(actions[:, t, :3], want[:, :, None, :].expand(-1, -1, 5, -1))
        # step 0 has no earlier pose: the training set's mean pose when normalised, else an absolute 0
        want0 = mean[None, :, None, :].expand(2, -1, 5, -1) if normalize else torch.zeros(2, 3, 5, 17)
        torch.testing.assert_close(actions[:, 0, :3], want0)


def test_residual_and_normalised_model_still_sees_only_the_past():
    torch.manual_seed(0)
    model = EgoAgent(tiny_cfg(action_residual=True, pose_normalization=True), joint=True).eval()
    model.action_projector.set_pose_statistics(torch.randn(3, 17), torch.rand(3, 17) + 0.5)
    with torch.no_grad():
        model.action_head.proj.weight.normal_(0, 0.02)  # a trained head: the offsets depend on the input
        frames, poses = clip()[0], _visible_poses()
        base = model.forward_joint(frames, poses).actions
        for t in range(3):
            later = poses.clone()
            later[:, t] = _visible_poses(seed=7)[:, t]
            out = model.forward_joint(frames, later).actions
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-6)
            assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-3


def test_prediction_can_start_as_the_copy_of_the_representation():
    torch.manual_seed(0)
    model = EgoAgent(tiny_cfg(), joint=True).eval()
    feats = torch.randn(3, 64)
    with torch.no_grad():
        assert (model.pred_head(feats) - model.rep_head(feats)).abs().max() > 1e-3  # fresh: another head
        model.init_prediction_from_representation()
        torch.testing.assert_close(model.pred_head(feats), model.rep_head(feats))
        torch.testing.assert_close(model.future_query, model.state_query)
        model.rep_head.mlp[0].weight.add_(1.0)  # copies, not shared tensors: they train apart
        assert (model.pred_head(feats) - model.rep_head(feats)).abs().max() > 1e-3


def test_residual_prediction_starts_as_the_copy_and_learns_a_change():
    torch.manual_seed(0)
    cfg = tiny_cfg(prediction_residual=True)
    model = EgoAgent(cfg, joint=True)
    residual = ResidualPrediction(cfg)  # what training and the evals build the prediction with
    frames, poses = clip()
    base = torch.randn(2, 4, 96)
    with pytest.raises(ValueError, match="pass the base"):
        residual.predict(model.forward_joint(frames, poses).future_logits, None)
    assert model.forward_joint(frames, poses, with_logits=False).future_logits is None  # the rollout needs none

    def predict(p):
        return residual.predict(model.forward_joint(frames, p).future_logits, base)

    torch.testing.assert_close(predict(poses), base, rtol=0, atol=0)  # exactly the copy: every gain starts at 0
    gains = model.pred_head.last_layer.parametrizations.weight.original0
    assert gains.requires_grad and not gains.any()
    target = torch.randn(2, 4, 96)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):  # the gains move first, then the rest of the head
        opt.zero_grad()
        (predict(poses) - target).square().mean().backward()
        opt.step()
    with torch.no_grad():
        moved, other = predict(poses) - base, predict(clip(seed=3)[1]) - base
        residual.change_scale = 0.25  # a calibrated share of the change
        torch.testing.assert_close(predict(poses) - base, 0.25 * moved)
    assert moved.abs().mean() > 1e-2
    assert (moved - other).abs().max() > 1e-3 * moved.abs().max()  # the change depends on the actions


def test_pose_normalization_standardises_the_input():
    torch.manual_seed(0)
    from internlm.model.projectors import ActionProjector

    plain, norm = ActionProjector(32), ActionProjector(32, normalize=True)
    norm.load_state_dict(plain.state_dict(), strict=False)
    mean, std = torch.randn(3, 17), torch.rand(3, 17) + 0.5
    norm.set_pose_statistics(mean, std)
    poses = _visible_poses()[:, 0]  # (2, 4, 5, 17)
    standardised = poses.clone()
    standardised[:, :3] = (poses[:, :3] - mean[:, None]) / std[:, None] * poses[:, 3:4]  # unseen joints -> 0
    torch.testing.assert_close(norm(poses), plain(standardised))
    assert set(norm.state_dict()) - set(plain.state_dict()) == {"pose_mean", "pose_std"}  # saved with the weights


def test_block_causal_image_tokens(joint_model):
    """Image tokens of one frame see each other (a later token changes an earlier one's output) and never a
    later frame."""
    m = joint_model
    T, N, d = 3, 4, m.cfg.hidden_size
    layout = m.joint_layout(T, N)
    assert layout.kind == "block_causal" and layout.seq_len == T * (N + 3)
    x = torch.randn(1, layout.seq_len, d)
    base = m.backbone(x, layout)
    per_step = N + 3
    # change the last image token of frame 1: the first image token of frame 1 changes, frame 0 does not
    y = x.clone()
    y[0, per_step + N - 1] += 1.0
    out = m.backbone(y, layout)
    assert (out[0, per_step] - base[0, per_step]).abs().max() > 1e-4
    torch.testing.assert_close(out[0, :per_step], base[0, :per_step], rtol=0, atol=1e-6)
    # plain causal (perframe_atten=False): the first image token does not see the last one of its frame
    causal = MaskLayout("causal", layout.seq_len)
    torch.testing.assert_close(m.backbone(y, causal)[0, per_step], m.backbone(x, causal)[0, per_step], rtol=0,
                               atol=1e-6)


def test_dense_block_causal_mask():
    layout = MaskLayout("block_causal", 10, ((0, 3), (5, 8)))
    dense = layout.dense("cpu")
    assert dense[0, 2] and dense[5, 7] and dense[7, 5]  # within an image block, both ways
    assert not dense[3, 4] and not dense[4, 5] and not dense[2, 5]  # other tokens causal, no look-ahead
    assert dense[9].all()


@pytest.mark.parametrize("kind", ["full", "causal", "block_causal"])
def test_backends_agree(kind):
    """Every backend available on the CPU gives the same attention output (fp32, 1e-5)."""
    torch.manual_seed(0)
    L = 23
    layout = MaskLayout(kind, L, ((0, 7), (10, 17)) if kind == "block_causal" else ())
    q, k, v = (torch.randn(2, 3, L, 16) for _ in range(3))
    outs = {}
    for name in ("sdpa", "flex"):
        kernel = AttentionKernel(name)
        outs[name] = kernel(q, k, v, kernel.prepare(layout, q.device, q.dtype), 0.25)
    reference = torch.softmax((q @ k.transpose(-1, -2)) * 0.25 + torch.where(
        layout.dense("cpu") if kind != "full" else torch.ones(L, L, dtype=torch.bool), 0.0, -math.inf), -1) @ v
    for name, out in outs.items():
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5, msg=name)


def test_whole_model_backends_agree():
    frames, poses = clip()
    torch.manual_seed(0)
    a = EgoAgent(tiny_cfg(attn_backend="sdpa"), joint=True).eval()
    b = EgoAgent(tiny_cfg(attn_backend="flex"), joint=True).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        oa, ob = a.forward_joint(frames, poses), b.forward_joint(frames, poses)
        torch.testing.assert_close(oa.actions, ob.actions, rtol=0, atol=1e-5)
        torch.testing.assert_close(oa.future_logits, ob.future_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.encode(frames[:, 0]), b.encode(frames[:, 0]), rtol=0, atol=1e-5)
    with pytest.raises(AttentionBackendError, match="no backward pass on the CPU"):
        b.forward_joint(frames, poses)


def test_unavailable_backend_says_why():
    with pytest.raises(AttentionBackendError, match="attn_backend='flash'.*(not installed|CUDA device)"):
        check_backend("flash", "full", torch.device("cpu"), torch.float32)
    # the joint branch's mask is refused for what it is, wherever flash-attn is installed or not
    with pytest.raises(AttentionBackendError, match="cannot express the block-causal mask"):
        check_backend("flash", "block_causal", torch.device("cuda"), torch.bfloat16)
    model = EgoAgent(tiny_cfg(attn_backend="flash"), joint=True).eval()
    frames, poses = clip()
    with torch.no_grad(), pytest.raises(AttentionBackendError, match="cannot express the block-causal mask"):
        model.forward_joint(frames, poses)  # the real path: the backbone prepares the joint layout
    with torch.no_grad(), pytest.raises(AttentionBackendError, match="attn_backend='flash'.*(not installed|CUDA)"):
        model.encode(torch.randn(1, 3, 16, 16))


def test_rope_is_relative():
    """Shifting every position by the same offset leaves all q.k scores unchanged."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(32)
    q, k = torch.randn(1, 2, 9, 32), torch.randn(1, 2, 9, 32)
    scores = []
    for offset in (0, 7, 1000):
        cos, sin = rope.cos_sin(9, torch.device("cpu"), offset=offset)
        scores.append(RotaryEmbedding.rotate(q, cos, sin) @ RotaryEmbedding.rotate(k, cos, sin).transpose(-1, -2))
    torch.testing.assert_close(scores[1], scores[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(scores[2], scores[0], rtol=0, atol=1e-4)
    cos, sin = rope.cos_sin(9, torch.device("cpu"))
    assert (RotaryEmbedding.rotate(q, cos, sin) - q).abs().max() > 0.1  # and it does rotate


@pytest.mark.parametrize("path, want", [
    ("configs/dino_pretrain/lr5e-4_tmp004_300m.py", 284e6), ("configs/joint_train/lr6e-04_tmp004_300m.py", 284e6),
    ("configs/dino_pretrain/lr5e-4_tmp004_1b.py", 1.13e9), ("configs/joint_train/lr6e-04_tmp004_1b.py", 1.13e9)])
def test_parameter_counts_match_the_paper(path, want):
    cfg = load_config(path)
    c = count_parameters(cfg.model, cfg.loss.is_joint)
    assert abs(c.model - want) / want < 0.01, c
    assert c.backbone == backbone_param_count(cfg.model.hidden_size, 22, 8 / 3)
    assert round(c.backbone / 1e6, 1) == {1024: 282.7, 2048: 1130.6}[cfg.model.hidden_size]
    assert c.heads > 0


def test_internlm_init_and_head_norm():
    torch.manual_seed(0)
    m = EgoAgent(tiny_cfg(hidden_size=256, num_layers=4, num_attention_heads=4), joint=True)
    b = m.backbone.blocks
    assert abs(b[0].mixer.Wqkv.weight.std().item() - 0.006) < 5e-4
    assert abs(b[3].mixer.out_proj.weight.std().item() - 0.006 / math.sqrt(8)) < 3e-4
    assert abs(b[3].mlp.w2.weight.std().item() - 0.006 / math.sqrt(8)) < 3e-4
    assert abs(b[1].mlp.w3.weight.std().item() - 0.0015) < 2e-4
    assert b[2].mixer.Wqkv.bias.abs().max() == 0
    g = m.rep_head.last_layer.parametrizations.weight.original0
    assert torch.all(g == 1) and not g.requires_grad  # norm_last_layer: |w_k| fixed to 1


def test_activation_checkpointing_same_gradients():
    frames, poses = clip()
    grads = []
    for fraction in (0.0, 1.0):
        torch.manual_seed(0)
        m = EgoAgent(tiny_cfg(checkpoint=fraction), joint=True).train()
        out = m.forward_joint(frames, poses)
        (out.actions.square().mean() + out.future_logits.mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert m.backbone.num_checkpointed == 2
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


# The largest deviation from fp32 of this tiny model's actions / future features under CPU autocast, measured on
# 2026-12-06 (torch 2.13, seeds 0-2): bf16 0.0028 / 0.023, fp16 0.0004 / 0.0027. The test allows 3x that.
LOW_PRECISION_MAX_ERROR = {torch.bfloat16: (0.0028, 0.023), torch.float16: (0.0004, 0.0027)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_fp32(dtype):
    torch.manual_seed(0)
    m = EgoAgent(tiny_cfg(), joint=True).eval()
    frames, poses = clip()
    other_frames, _ = clip(seed=10)
    with torch.no_grad():
        ref = m.forward_joint(frames, poses)
        other = m.forward_joint(other_frames, poses)
        with torch.autocast("cpu", dtype=dtype):
            low = m.forward_joint(frames, poses)
    assert low.actions.dtype == dtype
    assert torch.isfinite(low.future_logits.float()).all()
    for name, measured in zip(("actions", "future_feature"), LOW_PRECISION_MAX_ERROR[dtype]):
        error = getattr(low, name).float() - getattr(ref, name)
        assert error.abs().max() < 3 * measured, (name, float(error.abs().max()))
        # the images matter: other frames move the fp32 output by several times the low-precision error (so a model
        # that ignored its images, or a much larger error, would fail here)
        image_effect = (getattr(other, name) - getattr(ref, name)).square().mean().sqrt()
        assert error.square().mean().sqrt() * 4 < image_effect, (name, float(image_effect))


def _forward_backward(model, frames, poses, dtype=torch.bfloat16):
    with torch.autocast("cpu", dtype=dtype):
        out = model(views=[frames[:, 0], frames[:, 1]], frames=frames, poses=poses)
    loss = out.joint.actions.float().square().mean() + sum(v.logits.float().logsumexp(-1).mean() for v in out.views)
    loss.backward()
    return out, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_weights_cast_once_give_the_numbers_of_eager_autocast():
    """Under bf16 autocast EgoAgent.forward casts each block's linear weights once for all of its passes (compiled
    blocks would cast them per call): outputs and gradients are bitwise those of eager autocast, which caches the
    casts of trainable weights."""
    frames, poses = clip()
    results = []
    for once in (False, True):
        torch.manual_seed(0)
        model = EgoAgent(tiny_cfg(), joint=True).train()
        model.backbone.cast_weights_once = once
        out, grads = _forward_backward(model, frames, poses)
        results.append((out.joint.actions, out.views[1].logits, grads))
    for eager, once in zip(*results):
        torch.testing.assert_close(once, eager, rtol=0, atol=0)


def test_frozen_weights_keep_their_cast_until_they_change():
    """The EMA teacher's casts are kept across forwards (one cast per optimizer step, not per chunk) and made anew
    once its weights change in place."""
    torch.manual_seed(0)
    teacher = EgoAgent(tiny_cfg(), joint=True).eval().requires_grad_(False)
    frames, _ = clip()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = teacher(views=[frames[:, 0]]).views[0].logits
        kept = teacher.backbone._kept_casts[0][1]["mixer.Wqkv.weight"]
        again = teacher(views=[frames[:, 0]]).views[0].logits
        assert teacher.backbone._kept_casts[0][1]["mixer.Wqkv.weight"] is kept
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        params = list(teacher.parameters())
        torch._foreach_lerp_(params, [torch.randn_like(p) for p in params], 0.5)  # an EMA step
        updated = teacher(views=[frames[:, 0]]).views[0].logits
        fresh = EgoAgent(tiny_cfg(), joint=True).eval().requires_grad_(False)
        fresh.load_state_dict(teacher.state_dict())
        torch.testing.assert_close(updated, fresh(views=[frames[:, 0]]).views[0].logits, rtol=0, atol=0)
        assert (updated - first).abs().max() > 1e-3


def test_the_joint_pass_reaches_each_block_last_in_the_backward():
    """EgoAgent.forward runs the joint branch (the longest pass) first, so its backward comes last and each block's
    gradient is final while that pass's backward still runs: data parallelism reduces it meanwhile. Measured in
    backward work (elements written) until the last block's gradient is ready, against the views-first order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            Count.n += sum(t.numel() for t in (out if isinstance(out, (tuple, list)) else [out])
                           if isinstance(t, torch.Tensor))
            return out

    frames, poses = clip()
    share = {}
    for order in ("forward", "views first"):
        torch.manual_seed(0)
        model = EgoAgent(tiny_cfg(num_layers=4), joint=True).train()
        ready = {}
        model.backbone.blocks[-1].mixer.Wqkv.weight.register_post_accumulate_grad_hook(
            lambda p, ready=ready: ready.update(last=Count.n))
        if order == "forward":
            out = model(views=[frames[:, 0], frames[:, 1]], frames=frames, poses=poses)
            views, joint = out.views, out.joint
        else:
            views = [model.represent(v) for v in (frames[:, 0], frames[:, 1])]
            joint = model.forward_joint(frames, poses)
        loss = joint.actions.square().mean() + sum(v.logits.logsumexp(-1).mean() for v in views)
        Count.n = 0
        with Count():
            loss.backward()
        share[order] = ready["last"] / Count.n
    assert share["forward"] < share["views first"] - 0.1, share


def test_the_config_knows_the_attention_backends_the_model_has():
    from internlm.config.schema import ATTENTION_BACKENDS
    from internlm.model.attention import BACKENDS

    assert ATTENTION_BACKENDS == BACKENDS
