"""EgoAgent: one InternLM transformer that represents frames, predicts the next frame's feature and the next poses.

Token layouts (built by attention.representation_layout / joint_layout):
- representation branch (one view): [image tokens (N), state query]; the feature is the final-normed output at
  the state query.
- joint branch (a clip of T steps), per step t: [image tokens of frame t (N), action query, action token of the
  poses of step t, future-state query]; N + 3 tokens per step. The action query of step t predicts the poses of
  step t (it sees frames <= t and poses < t); the future-state query of step t predicts the feature of frame t+1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from internlm.config.schema import ModelConfig

from .attention import TOKENS_PER_STEP_EXTRA, MaskLayout, check_backend, joint_layout, representation_layout
from .heads import ActionHead, DINOHead
from .modeling_internlm import InternLMBackbone, init_internlm_weights
from .pose_ops import block_from_poses, block_xyz, last_observed_pose
from .projectors import ActionProjector, ImageProjector

# The joint-branch parts a stage-1 model does not have (they start from their initialisation in stage 2 and are
# left out of the Hugging Face export of the image encoder).
JOINT_ONLY_PREFIXES = ("action_projector.", "action_query", "future_query", "pred_head.", "action_head.")


def check_backend_can_train(cfg: ModelConfig, joint: bool, device: torch.device, dtype: torch.dtype,
                            needs_grad: bool = True) -> None:
    """Raise AttentionBackendError now if cfg's attention backend cannot train the layouts of this model here
    (else the first forward finds out, after the model is built and the data indexed)."""
    layouts = [representation_layout(1, cfg.causal, cfg.perframe_atten)]
    layouts += [joint_layout(1, 1, cfg.perframe_atten)] if joint else []
    for layout in layouts:
        check_backend(cfg.resolved_attn_backend, layout.kind, device, dtype, needs_grad=needs_grad)


@dataclass
class RepresentationOutput:
    feature: torch.Tensor  # (B, d) final-normed state-query output
    logits: torch.Tensor  # (B, K) representation head


@dataclass
class AgentOutput:
    views: list[RepresentationOutput]  # one per group of same-size views, in the order given
    joint: Optional["JointOutput"]
    # the actions (B, T, 4, 5, 17) of each rollout pass (forward's rollout_passes), in the order they ran
    rollout_actions: list[torch.Tensor] = field(default_factory=list)


@dataclass
class JointOutput:
    actions: torch.Tensor  # (B, T, 4, 5, 17) predicted pose block of each step
    future_feature: torch.Tensor  # (B, T, d) final-normed future-state-query output
    # (B, T, K) the state-prediction head's output (None when not requested): the prediction, or with
    # model.prediction_residual the change that train/prediction_base.py adds to its base
    future_logits: Optional[torch.Tensor]


class EgoAgent(nn.Module):
    """Student and teacher are both this module. ``joint=False`` builds the stage-1 model (no action/prediction
    parts), ``joint=True`` the stage-2 model."""

    def __init__(self, cfg: ModelConfig, joint: bool):
        super().__init__()
        if joint and not cfg.causal:
            raise ValueError("model.causal=False would let the action query of step t see later frames and poses;"
                             " the joint model needs causal=True")
        self.cfg = cfg
        self.joint = joint
        d = cfg.hidden_size
        self.image_projector = ImageProjector(d, cfg.patch_size)
        self.state_query = nn.Parameter(torch.zeros(d))
        self.backbone = InternLMBackbone(d, cfg.num_layers, cfg.num_attention_heads, cfg.mlp_ratio,
                                         cfg.layer_norm_epsilon, cfg.rope_base, cfg.resolved_attn_backend,
                                         cfg.checkpoint_fraction)
        self.rep_head = DINOHead(d, cfg.output_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                                 cfg.norm_last_layer)
        if joint:
            self.action_projector = ActionProjector(d, cfg.pose_channels, cfg.pose_frames, cfg.num_joints,
                                                    normalize=cfg.pose_normalization)
            self.action_query = nn.Parameter(torch.zeros(d))
            self.future_query = nn.Parameter(torch.zeros(d))
            self.pred_head = DINOHead(d, cfg.output_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim,
                                      cfg.norm_last_layer, zero_gain=cfg.prediction_residual)  # a change: 0 at first
            self.action_head = ActionHead(d, cfg.pose_channels, cfg.pose_frames, cfg.num_joints,
                                          zero_init=cfg.action_residual)
        self.reset_backbone_and_queries()

    @torch.no_grad()
    def reset_backbone_and_queries(self) -> None:
        init_internlm_weights(self.backbone, self.cfg.init_std, self.cfg.init_std / 4)
        for q in self.query_parameters():
            nn.init.trunc_normal_(q, std=0.02)

    @torch.no_grad()
    def init_prediction_from_representation(self) -> None:
        """The state-prediction head and the future-state query become copies of the representation head and the
        state query: the predictor starts from "the next frame looks like this one" (model.prediction_init)."""
        self.pred_head.load_state_dict(self.rep_head.state_dict())
        self.future_query.copy_(self.state_query)

    def query_parameters(self) -> list[nn.Parameter]:
        qs = [self.state_query]
        if self.joint:
            qs += [self.action_query, self.future_query]
        return qs

    # ------------------------------------------------------------------------------------ layouts

    def representation_layout(self, num_image_tokens: int) -> MaskLayout:
        return representation_layout(num_image_tokens, self.cfg.causal, self.cfg.perframe_atten)

    def joint_layout(self, num_steps: int, num_image_tokens: int) -> MaskLayout:
        return joint_layout(num_steps, num_image_tokens, self.cfg.perframe_atten)

    # ------------------------------------------------------------------------------------ branches

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, d)
        tokens = self.image_projector(images)  # (B, N, d)
        B, N, d = tokens.shape
        x = torch.cat([tokens, self.state_query.to(tokens.dtype).expand(B, 1, d)], dim=1)  # (B, N+1, d)
        return self.backbone(x, self.representation_layout(N))[:, -1]

    def represent(self, images: torch.Tensor) -> RepresentationOutput:  # (B, 3, H, W)
        feature = self.encode(images)
        return RepresentationOutput(feature, self.rep_head(feature))

    def forward_joint(self, frames: torch.Tensor, poses: torch.Tensor, with_logits: bool = True) -> JointOutput:
        """frames (B, T, 3, P, P), poses (B, T, 4, 5, 17) -> JointOutput (the heads' outputs)."""
        if not self.joint:
            raise RuntimeError("this is the stage-1 model (joint=False); it has no action or prediction parts")
        B, T = frames.shape[:2]
        img = self.image_projector(frames.flatten(0, 1))  # (B*T, N, d)
        N, d = img.shape[1:]
        img = img.view(B, T, N, d)
        act = self.action_projector(poses.flatten(0, 1).to(img.dtype)).view(B, T, 1, d)
        aq = self.action_query.to(img.dtype).expand(B, T, 1, d)
        fq = self.future_query.to(img.dtype).expand(B, T, 1, d)
        x = torch.cat([img, aq, act, fq], dim=2).reshape(B, T * (N + TOKENS_PER_STEP_EXTRA), d)
        out = self.backbone(x, self.joint_layout(T, N)).view(B, T, N + TOKENS_PER_STEP_EXTRA, d)
        actions = self.action_head(out[:, :, N])  # (B, T, 4, 5, 17)
        if self.cfg.action_residual:
            actions = self.add_residual_base(actions, poses)
        future = out[:, :, N + 2]  # (B, T, d)
        logits = self.pred_head(future) if with_logits else None
        return JointOutput(actions, future, logits)

    def rollout_pass(self, frames: torch.Tensor, poses: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """One pass of the autoregressive rollout: the action tokens of steps >= 1 become ``actions``' predictions of
        those steps (x, y, z detached, every joint visible), step 0 keeps its true poses ``poses[:, 0]`` -> this
        pass's actions (B, T, 4, 5, 17). The action query of step t sees tokens < t only (causal), so after k passes
        from any tokens the predictions of steps <= k are those of the rollout on the model's own predictions."""
        xyz = actions[:, 1:, :3].detach().to(poses.dtype).movedim(2, -1)  # (B, T-1, 5, 17, 3)
        fed = block_from_poses(xyz, torch.ones(xyz.shape[:-1], dtype=torch.bool, device=xyz.device))
        tokens = torch.cat([poses[:, :1], fed], dim=1)  # (B, T, 4, 5, 17)
        return self.forward_joint(frames, tokens, with_logits=False).actions

    def residual_base(self, poses: torch.Tensor) -> torch.Tensor:
        """poses (B, T, 4, F, J) -> (B, T, 3, 1, J): what the residual action head adds to its output at step t,
        the last observed pose of step t - 1 (per joint, its last visible frame in that block; the action query
        of step t sees those poses). Step 0 has no earlier pose: the training set's mean pose when the input is
        normalised, else 0 (an absolute prediction)."""
        B, T, _, _, J = poses.shape
        xyz, visible = block_xyz(poses[:, :T - 1].float())  # (B, T-1, F, J, 3), (B, T-1, F, J)
        last = last_observed_pose(xyz.flatten(0, 1), visible.flatten(0, 1)).view(B, T - 1, J, 3)
        if self.cfg.pose_normalization:
            first = self.action_projector.pose_mean.view(3, J).T.expand(B, 1, J, 3).float()
        else:
            first = last.new_zeros(B, 1, J, 3)
        return torch.cat([first, last], dim=1).permute(0, 1, 3, 2).unsqueeze(3)  # (B, T, 3, 1, J)

    def add_residual_base(self, actions: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        base = self.residual_base(poses).to(actions.dtype)  # (B, T, 3, 1, J)
        return torch.cat([actions[:, :, :3] + base, actions[:, :, 3:]], dim=2)

    def forward(self, views: Sequence[torch.Tensor] = (), frames: Optional[torch.Tensor] = None,
                poses: Optional[torch.Tensor] = None, rollout_passes: int = 0) -> AgentOutput:
        """Everything one training step needs from this model, in one call (DDP and FSDP only see ``forward``).

        views: groups of same-size views, each (B_i, 3, S_i, S_i) -> representation of every view;
        frames (B, T, 3, P, P) and poses (B, T, 4, 5, 17) -> the joint branch (poses as tokens: teacher-forced),
        then ``rollout_passes`` more passes, each fed the previous pass's predicted poses (rollout_pass)."""
        with self._compute_dtype_weights(frames if frames is not None else views[0]):
            # The joint branch first: the backward runs in reverse, so its passes (the longest) are the last to reach
            # each block, and data parallelism reduces each block's finished gradients while they still run.
            joint = self.forward_joint(frames, poses) if frames is not None else None
            rollout = []
            for _ in range(rollout_passes if joint is not None else 0):
                rollout.append(self.rollout_pass(frames, poses, rollout[-1] if rollout else joint.actions))
            outs = [self.represent(v) for v in views]
        return AgentOutput(outs, joint, rollout)

    def _compute_dtype_weights(self, x: torch.Tensor):
        """Under fp16/bf16 autocast, the backbone's linear weights cast once for all the passes of this forward."""
        device = x.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) in (torch.float16, torch.bfloat16):
            return self.backbone.weights_cast_once(torch.get_autocast_dtype(device))
        return contextlib.nullcontext()
