"""The typed config: one dataclass per section of an InternLM-style config file.

Field names are exactly the keys of the authors' configs (docs/configs.md), so their files load unchanged. Every
field here takes effect; keys of InternLM plumbing that mean nothing here are accepted, with no effect, by the
loader's table ``loader.ACCEPTED_NO_EFFECT`` and never reach these classes. A value the framework does not
implement raises ConfigError in ``validate`` saying what is supported. Keys marked "added" are ours. Keys that
repeat what other keys already fix (token lengths, frame counts, per-chunk batch ...) default to None ("not
given") and, when given, must agree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .typed import ConfigError

# ----------------------------------------------------------------------------------------------- model


@dataclass
class ConvStemConfig:
    img_size: int = 224
    patch_size: int = 16


@dataclass
class LVMConfig:
    enable: bool = False  # VQGAN embedding of images: not built
    enable_conv_stem: bool = True  # the conv image projector of the paper (Table 8)
    conv_stem_config: ConvStemConfig = field(default_factory=ConvStemConfig)  # img_size = data.vid_crop_size
    enable_encoder: bool = False  # VQGAN encoder: not built


DTYPES = ("torch.float32", "torch.tf32", "torch.float16", "torch.half", "torch.bfloat16")
# model.attn_backend: the attention kernels model/attention.py implements (its BACKENDS)
ATTENTION_BACKENDS = ("sdpa", "flex", "flash")
# model.flavor: one name for width, depth and heads (as torchtitan's flavors). 300M and 1B are the paper's
# EgoAgent-300M / -1B (284M / 1.13B parameters with the paper configs' heads); tiny trains on a laptop CPU.
MODEL_FLAVORS = {
    "tiny": dict(hidden_size=64, num_layers=2, num_attention_heads=2),
    "300M": dict(hidden_size=1024, num_layers=22, num_attention_heads=8),
    "1B": dict(hidden_size=2048, num_layers=22, num_attention_heads=16),
}


@dataclass
class ModelConfig:
    teacher: bool = False  # False in `model`, True in `teacher`; the teacher's weights are the student's EMA
    perframe_atten: bool = True  # block-causal: image tokens of one frame see each other
    use_cls_token: bool = True  # the state query token; the DINO feature is read there
    use_multi_crop: bool = True  # the student also sees the local crops (= data.use_local_crop)
    use_tracking: bool = False  # DoRA tracking: not built
    head_type: str = "dino"
    checkpoint: Union[bool, float] = False  # fraction of blocks with activation checkpointing (student only)
    num_attention_heads: int = 8
    embed_grad_scale: float = 1.0  # InternLM's gradient scale of the token embedding: only 1 (no token embedding)
    hidden_size: int = 1024
    output_dim: int = 65536  # DINO prototypes
    num_layers: int = 22
    mlp_ratio: float = 8 / 3
    apply_post_layer_norm: bool = False
    dtype: str = "torch.float32"  # compute dtype (autocast); weights and EMA stay fp32. The teacher runs in its own.
    norm_type: str = "rmsnorm"
    layer_norm_epsilon: float = 1e-6
    use_flash_attn: bool = False  # = attn_backend "flash"
    return_track: bool = False  # DoRA tracking attention output: not built
    causal: bool = True
    frames2batch: bool = False  # not built
    num_chunks: int = 1  # interleaved pipeline chunks: only 1
    lvm_config: LVMConfig = field(default_factory=LVMConfig)
    # added
    # MODEL_FLAVORS: sets hidden_size, num_layers and num_attention_heads. In a file, sizes given beside it must
    # agree with it; on the command line (--opt model.flavor=tiny) it replaces the file's sizes, and the teacher
    # follows (config/loader.py).
    flavor: Optional[str] = None
    attn_backend: Optional[str] = None  # sdpa | flex | flash; None: flash if use_flash_attn else sdpa
    head_hidden_dim: int = 2048  # DINO head MLP width (Table 8)
    head_bottleneck_dim: int = 256
    norm_last_layer: bool = True  # DINO: weight-normalised last layer with its norm fixed to 1
    rope_base: float = 10000.0
    pose_frames: int = 5  # poses per step (one action token)
    num_joints: int = 17
    pose_channels: int = 4  # x, y, z, visibility
    # Action head and projector options (off in the paper's configs, which predict absolute poses from raw input):
    action_residual: bool = False  # predict offsets from the last pose of the previous step (zero-initialised)
    pose_normalization: bool = False  # standardise the pose input per joint and axis (training-set statistics)
    # torch.compile (inductor) each transformer block of student and teacher; None: on CUDA, not on a CPU
    compile: Optional[bool] = None
    # Stage 2 from a stage-1 checkpoint (which has no prediction head): "fresh" initialises the state-prediction
    # head and future-state query like any new layer (the paper); "representation" copies the representation head
    # and state query into them, so the predictor starts as the copy baseline.
    prediction_init: str = "fresh"
    # The state-prediction output as a change: logits = the L_pred minimiser for "frame t+1 looks like frame t" under
    # the teacher's representation of frame t, plus the state-prediction head (its prototype gains start at 0), so
    # the predictor starts exactly as the copy baseline and learns only what the action and history change.
    prediction_residual: bool = False
    # With prediction_residual: the base is the teacher's view of frame t *reprojected by the step's camera rotation*
    # (the action's ego-motion, model/reprojection.py) instead of frame t itself; needs data.camera_motion=True.
    prediction_reprojection: bool = False
    # InternLM's normal init std (qkv, w1; out_proj and w2 divided by sqrt(2 (layer + 1)); w3 a quarter). 0.006 is
    # InternLM's value for d >= 1024; narrow demo models need a larger one or every image starts with one feature.
    init_std: float = 0.006

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def img_size(self) -> int:
        return self.lvm_config.conv_stem_config.img_size

    @property
    def patch_size(self) -> int:
        return self.lvm_config.conv_stem_config.patch_size

    @property
    def resolved_attn_backend(self) -> str:
        if self.attn_backend is not None:
            return self.attn_backend
        return "flash" if self.use_flash_attn else "sdpa"

    @property
    def checkpoint_fraction(self) -> float:
        if isinstance(self.checkpoint, bool):
            return 1.0 if self.checkpoint else 0.0
        return float(self.checkpoint)


# ------------------------------------------------------------------------------------------------ data

DATASET_TYPES = ("WTVideos", "WT1Video", "ImgNetDINO", "EgoExoClips", "Generated")
# Ego-Exo4D processed_data keeps every 5th video frame (data/egoexo_format.py FRAME_STEP): clip strides are
# multiples of it
PROCESSED_FRAME_STEP = 5
# data.pose_frame: the coordinate frame the clip loader delivers poses in. The processed fragments store each
# frame's own camera frame; the others are computed from the fragments' camera rotation and trajectory.
POSE_FRAMES = {
    "camera": "each frame's own Aria camera frame (the paper's choice; the stored values)",
    "world": "the take's world coordinates",
    "take_first_camera": "the camera frame of the take's first posed frame",
    "clip_first_camera": "the camera frame of the clip's first frame: ego-motion shows in the poses",
}


@dataclass(frozen=True)
class SampleShapes:
    """The sizes of one training sample that its cost depends on (model/flops.py), from the data config."""

    global_crop: int  # pixels of a global crop (data.vid_crop_size); 2 per sample
    local_crop: int  # pixels of a local crop (data.local_crop_size)
    local_crops: int  # local crops per sample (0 without data.use_local_crop)
    joint: bool  # stage 2: a clip of clip_steps frames of frame pixels besides the crops
    frame: int  # data.pred_img_size
    clip_steps: int  # data.clip_steps


@dataclass
class DataConfig:
    seq_len: int = 1  # InternLM's packed token sequence: only 1 (one sample per sequence; its length follows the crops)
    micro_num: int = 64  # samples (frames in stage 1, clips in stage 2) per optimizer step per GPU
    micro_bsz: int = 1  # InternLM's samples packed per micro-batch: only 1 (micro_num is the per-GPU batch)
    valid_micro_num: int = 2  # validation batch per GPU (InternLM: micro-batches of micro_bsz = 1 sample)
    valid_every: int = 0  # validation losses every N steps and at the end (0: never)
    gradient_accumulation: int = 1  # the per-GPU batch is split into this many chunks
    pack_sample_into_one: bool = False  # InternLM's sequence packing: not built
    train_one_epoch: bool = False  # stop after one pass over the data
    total_steps: int = 1000
    skip_batches: str = ""  # InternLM's ranges of batches to skip: not built (only "")
    rampup_batch_size: str = ""  # InternLM's batch-size ramp-up: not built (only "")
    train_folder: Union[list[str], str, None] = None  # stage 1: WalkingTours mp4 files or frame folders, ImageFolder
    valid_folder: Union[list[str], str, None] = None  # stage 1 validation, same kinds (stage 2: egoexo_valid_split)
    frames_per_clip: Optional[int] = None  # frames per sample when given: 1 in stage 1, clip_steps in stage 2
    dataset_type: str = "WTVideos"  # "Generated": random tensors of the real shapes (benchmarks, smoke tests)
    # frames between two samples: WalkingTours frames (stage 1, default 30); clip starts (stage 2, a multiple of
    # the 5 frames between undistorted images, default 5)
    step_between_clips: Optional[int] = None
    # added: stage 1 samples each WalkingTours video at this many frames per second of video instead (the paper: 6;
    # a video's step is round(its fps / sample_fps)); on the command line it replaces the file's step_between_clips
    sample_fps: Optional[float] = None
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    use_local_crop: bool = True
    use_egoexo: Optional[bool] = None  # stage 1: add the Ego-Exo4D frames (default no); stage 2 is Ego-Exo4D
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crops_number: int = 6
    init_crop_size: int = 300  # DoRA's first RandomResizedCrop
    vid_crop_size: int = 224  # global crop size
    local_crop_size: int = 112
    norm_vid: bool = True  # ImageNet mean/std normalisation
    num_frame_tokens: Optional[int] = None  # (vid_crop_size / patch_size)^2 when given
    # added
    egoexo_frames_folder: str = "data/egoexo4d_v2/processed_data"
    egoexo_pose_folder: str = "data/egoexo4d_body_pose"
    egoexo_train_split: str = "train"
    egoexo_valid_split: str = "val"
    clip_frames: int = 20  # one clip: 20 consecutive annotated frames at 30 fps
    clip_steps: int = 4  # ... split into T=4 steps of 5 frames
    pred_img_size: int = 224  # full frames resized for prediction/action (teacher targets too)
    init_crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_prob: float = 0.5  # DINO's horizontal flip of every crop; a mirrored view swaps left and right turns
    pose_frame: str = "camera"  # POSE_FRAMES: the coordinate frame of the clips' poses
    # Clips also carry each step's camera motion (T, 12) from the pose fragments' extrinsics and the frames'
    # pinhole focal length (from the undistortion marker): the input of model.prediction_reprojection.
    camera_motion: bool = False
    # Stage 2 with model.prediction_residual: the last N training takes (in take-uid order) are held out of
    # training; after the last step the scale of the learned prediction change (0..1, train/prediction_base.py) is the
    # one that minimises L_pred on their clips, i.e. how much of the change holds on takes it was not fitted to.
    calibration_takes: int = 0
    # Stage 2: the clip frames the student's joint branch sees get one random colour change per clip (channel order,
    # contrast, shift; the same for every frame of the clip, so the motion between them stays), drawn from the sample's
    # augmentation generator; the teacher's targets see the frames as they are. Where every take is its own room, an
    # image's colours name its take and the action pathway memorises how the walker moved there (docs/demo_findings.md)
    clip_color_change: bool = False
    num_workers: int = 2
    seed: int = 0  # data order and augmentation; train.py --seed overrides

    @property
    def steps_per_clip(self) -> int:
        return self.clip_frames // self.clip_steps

    def frame_stride(self, joint: bool) -> int:
        """step_between_clips, or its default for the stage."""
        if self.step_between_clips is not None:
            return self.step_between_clips
        return 5 if joint else 30

    def folders(self, which: str) -> list[str]:
        value = self.train_folder if which == "train" else self.valid_folder
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)


# ------------------------------------------------------------------------------------------------ loss

LOSS_NAMES = ("dinoimgcls", "joint")


@dataclass
class LossConfig:
    name: str = "dinoimgcls"  # dinoimgcls: stage 1 (L_rep on frames); joint: stage 2 (L_rep + L_pred + L_act)
    incld_cls_token: bool = True  # the loss is on the state query ("cls") token: only True
    use_multicrop: bool = True  # local crops in the loss (= data.use_local_crop)
    use_tracking: bool = False  # not built
    out_dim: int = 65536  # = model.output_dim
    local_crops_number: int = 6  # = data.local_crops_number (when use_multicrop)
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 3
    epochs: float = 101  # an "epoch" here is total_steps / epochs optimizer steps (for the warm-ups above)
    grad_accum: int = 1  # = data.gradient_accumulation
    batch_size: Optional[int] = None  # per-chunk batch: micro_num / gradient_accumulation when given
    global_token_len: Optional[int] = None  # image tokens of a global crop: (vid_crop_size / patch_size)^2
    local_token_len: Optional[int] = None  # image tokens of a local crop: (local_crop_size / patch_size)^2
    nframes: Optional[int] = None  # frames per sample: 1 (stage 1), clip_steps (stage 2)
    # added
    student_temp: float = 0.1
    center_momentum: float = 0.9
    freeze_last_layer_steps: int = 0  # DINO: no update of the heads' last (prototype) layer for the first N steps
    rep_weight: float = 1.0  # w_rep (paper eq. 4; the values are lost from the text)
    pred_weight: float = 1.0  # w_pred
    act_weight: float = 1.0  # w_act
    # L_act also on this many rollout passes (the action tokens of steps >= 1 the previous pass's predictions),
    # averaged with the teacher-forced one: 0 is the paper's teacher-forced training; data.clip_steps - 2 passes
    # train on exactly the evaluation's autoregressive rollout
    act_rollout_passes: int = 0

    @property
    def is_joint(self) -> bool:
        return self.name == "joint"


# ----------------------------------------------------------------------------------- optimisation


@dataclass
class AdamConfig:
    lr: float = 5e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999  # beta2 of the first step; later steps follow beta2_scheduler
    adam_beta2_c: float = 0.0  # the authors' files copy it into beta2_scheduler.c: must equal it
    adam_eps: float = 1e-8
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    # added
    fused: Optional[bool] = None  # None: torch's fused AdamW on CUDA, foreach elsewhere


@dataclass
class LrSchedulerConfig:
    total_steps: int = 1000  # = data.total_steps (follows a --opt data.total_steps)
    init_steps: int = 0  # InternLM's steps before the warm-up: only 0
    warmup_ratio: float = 0.1
    eta_min: float = 5e-6
    last_epoch: int = -1  # torch's scheduler position: only -1 (a resumed run restores the step)
    # added
    warmup_steps: Optional[int] = None  # the warm-up in steps (stage 2: 1800); with warmup_ratio, they must agree

    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.total_steps * self.warmup_ratio))


@dataclass
class Beta2SchedulerConfig:
    """InternLM's beta2 schedule: after k >= 1 optimizer steps beta2 = max(init_beta2, 1 - k^-c) (c > 0), or
    init_beta2 (c = 0); the first step uses adam.adam_beta2."""

    init_beta2: Optional[float] = None  # None: adam.adam_beta2
    c: float = 0.0
    cur_iter: int = -1  # the schedule's starting iteration: only -1 (a resumed run restores the step)


@dataclass
class FP16ScalerConfig:
    initial_scale: float = 2**16
    min_scale: float = 1.0
    growth_interval: int = 1000


@dataclass
class GradScalerConfig:
    fp16: FP16ScalerConfig = field(default_factory=FP16ScalerConfig)
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    max_scale: float = 2**24
    hysteresis: int = 2  # overflows tolerated before the scale is lowered


@dataclass
class ZeroOptimizerConfig:
    reduce_bucket_size: int = 512 * 1024 * 1024  # DDP bucket size in bytes
    clip_grad_norm: float = 1.0
    # added
    max_consecutive_skipped_steps: int = 50  # this many non-finite steps in a row stop the run (0: never)


@dataclass
class MomentumSchedulerConfig:
    momentum_teacher: float = 0.996
    epochs: Optional[float] = None  # the cosine runs over epochs x (total_steps / loss.epochs) steps; None: loss.epochs
    # added
    momentum_teacher_end: float = 1.0


@dataclass
class KDConfig:
    """The authors' distillation block. It restates what other sections fix, so when given it must agree."""

    gt_weight: Optional[float] = None  # weight of a supervised loss: only 0 (no labels)
    kd_weight: Optional[float] = None  # weight of the distillation loss: only 1 (use loss.rep/pred/act_weight)
    type: Optional[str] = None  # = loss.name
    # The teacher's EMA momentum, which the authors' files restate under this name (it is no temperature): only
    # momentum_scheduler.momentum_teacher is read; a value given here must equal it.
    temperature: Optional[float] = None


# --------------------------------------------------------------------------------------- parallel


@dataclass
class Zero1Config:
    size: int = -1  # <= 0: shard over the whole data-parallel group; 1: no sharding
    fsdp: bool = False  # shard parameters too (FSDP2 fully_shard)


@dataclass
class PipelineConfig:
    size: int = 1


@dataclass
class TensorConfig:
    size: int = 1


@dataclass
class ParallelConfig:
    zero1: Union[int, Zero1Config] = 1
    pipeline: Union[int, PipelineConfig] = field(default_factory=PipelineConfig)
    tensor: Union[int, TensorConfig] = 1
    sequence_parallel: bool = False
    # added
    timeout_s: float = 1800.0  # a collective stuck longer than this fails the job instead of hanging
    # fp16/bf16 runs: DDP / ZeRO-1 gradients cross nodes in model.dtype and are summed in fp32
    # (internlm/parallel/comm_hooks.py); FSDP2 gathers parameters in model.dtype and reduces gradients in fp32.
    # False: all in fp32. No effect in fp32 runs.
    low_precision_comm: bool = True
    # fp16/bf16 runs: the blocks' weight-gradient GEMMs add into fp32 buffers across passes and accumulation chunks,
    # the weights are cast once per step (internlm/parallel/grad_accumulation.py). None: on where it pays (CUDA, a
    # torch with the fused GEMM, not FSDP2); True / False: forced.
    grad_accumulation_fusion: Optional[bool] = None

    @property
    def zero1_config(self) -> Zero1Config:
        return self.zero1 if isinstance(self.zero1, Zero1Config) else Zero1Config(size=self.zero1)

    @property
    def pipeline_size(self) -> int:
        return self.pipeline if isinstance(self.pipeline, int) else self.pipeline.size

    @property
    def tensor_size(self) -> int:
        return self.tensor if isinstance(self.tensor, int) else self.tensor.size


# ------------------------------------------------------------------------------------- checkpoints


@dataclass
class LoadCkptInfo:
    path: str = ""
    content: Union[list[str], tuple[str, ...]] = ("model",)  # model | all
    ckpt_type: str = "internlm"  # only "internlm" (this framework's checkpoints)


@dataclass
class CkptConfig:
    enable_save_ckpt: bool = True
    save_ckpt_folder: Optional[str] = None
    # the teacher's weights are in every checkpoint; when set, {this}/{step}/teacher_tp0_pp0.pt too (a hard link)
    save_teacher_ckpt_folder: Optional[str] = None
    load_ckpt_info: Optional[LoadCkptInfo] = None  # initialise from another run (stage 2 from stage 1)
    load_ckpt_folder: Optional[str] = None  # same as load_ckpt_info(path=..., content=("model",))
    checkpoint_every: int = 1000
    auto_resume: bool = True  # continue from the newest complete checkpoint in save_ckpt_folder
    # added
    async_save: bool = False  # torch.distributed.checkpoint.async_save for the sharded training state
    keep_last: int = 0  # > 0: delete older complete checkpoints, keeping this many
    # a file of the newest complete checkpoint cannot be read: True resumes from the previous complete one (with a
    # warning; the corrupt folder is renamed {step}.corrupt and kept), False stops with the error
    fallback_on_corrupt: bool = True
    # resuming with a config that makes it another experiment (batch, lr and schedules, loss weights, model, data;
    # train/config_change.py) stops the run; True goes on, with a warning, and records the changes in meta.json
    allow_config_change: bool = False

    def init_source(self) -> Optional[LoadCkptInfo]:
        if self.load_ckpt_info is not None:
            return self.load_ckpt_info
        if self.load_ckpt_folder:
            return LoadCkptInfo(path=self.load_ckpt_folder)
        return None


# ----------------------------------------------------------------------------------------- monitor


@dataclass
class MonitorConfig:
    # added
    log_every: int = 10  # console line every N steps (TensorBoard gets every step)
    tensorboard_folder: Optional[str] = None  # default: {save_ckpt_folder}/tensorboard
    peak_tflops: Optional[float] = None  # for MFU; None: detected from the GPU name
    metrics_file: bool = True  # rank 0 appends every step's scalars to {save_ckpt_folder}/metrics.jsonl
    record_sample_ids: bool = False  # every rank appends its batches' sample ids to samples_rank{r}.jsonl (audits)


# ----------------------------------------------------------------------------------------- the run

# The authors' name of the conv-stem InternLM, and ours; both build EgoAgent (InternLM's text model is not built).
MODEL_TYPES = ("INTERNLM_VQGAN", "EGOAGENT")


@dataclass
class TrainConfig:
    """A whole config file. Upper-case module names are kept, untyped, in ``constants``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: Optional[ModelConfig] = None
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    adam: AdamConfig = field(default_factory=AdamConfig)
    lr_scheduler: LrSchedulerConfig = field(default_factory=LrSchedulerConfig)
    beta2_scheduler: Beta2SchedulerConfig = field(default_factory=Beta2SchedulerConfig)
    grad_scaler: GradScalerConfig = field(default_factory=GradScalerConfig)
    hybrid_zero_optimizer: ZeroOptimizerConfig = field(default_factory=ZeroOptimizerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    momentum_scheduler: MomentumSchedulerConfig = field(default_factory=MomentumSchedulerConfig)
    kd_config: KDConfig = field(default_factory=KDConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    model_type: str = "EGOAGENT"
    teacher_type: str = "EGOAGENT"
    cudnn_deterministic: bool = False
    cudnn_benchmark: bool = False
    JOB_NAME: str = "egoagent"  # names the eval scripts' output folders
    constants: dict[str, Any] = field(default_factory=dict)
    source_file: Optional[str] = None

    @property
    def stage(self) -> int:
        return 2 if self.loss.is_joint else 1

    def sample_shapes(self) -> SampleShapes:
        data = self.data
        return SampleShapes(data.vid_crop_size, data.local_crop_size,
                            data.local_crops_number if data.use_local_crop else 0, self.loss.is_joint,
                            data.pred_img_size, data.clip_steps)

    @property
    def teacher_model(self) -> ModelConfig:
        """The teacher section, or the student's with teacher=True (a config without one)."""
        return self.teacher if self.teacher is not None else dataclasses.replace(self.model, teacher=True,
                                                                                 checkpoint=False)


def _not_built(what: str, key: str) -> ConfigError:
    return ConfigError(f"{key}: {what} is configured on, but this framework does not build it; set it off")


def _only(key: str, value: Any, supported: Any, why: str) -> None:
    if value != supported:
        raise ConfigError(f"{key}={value!r}: only {supported!r} is supported ({why})")


def _validate_model(m: ModelConfig, section: str) -> None:
    lvm = m.lvm_config
    if lvm.enable:
        raise _not_built("the VQGAN token embedding", f"{section}.lvm_config.enable=True")
    if lvm.enable_encoder:
        raise _not_built("the VQGAN encoder", f"{section}.lvm_config.enable_encoder=True")
    if not lvm.enable_conv_stem:
        raise ConfigError(
            f"{section}.lvm_config.enable_conv_stem=False: the conv image projector is the only image tokenizer built"
        )
    if m.use_tracking:
        raise _not_built("DoRA's tracking mechanism", f"{section}.use_tracking=True")
    if m.return_track:
        raise _not_built("DoRA's tracking attention output", f"{section}.return_track=True")
    if m.frames2batch:
        raise _not_built("frames2batch", f"{section}.frames2batch=True")
    if m.apply_post_layer_norm:
        raise _not_built("post-layer norm", f"{section}.apply_post_layer_norm=True")
    if m.num_chunks != 1:
        raise _not_built("the interleaved pipeline (num_chunks > 1)", f"{section}.num_chunks={m.num_chunks}")
    if m.head_type != "dino":
        raise ConfigError(f"{section}.head_type={m.head_type!r}: only the 'dino' head is built")
    if not m.use_cls_token:
        raise ConfigError(f"{section}.use_cls_token=False: the feature is read at the state query; it must be True")
    if m.norm_type != "rmsnorm":
        raise ConfigError(f"{section}.norm_type={m.norm_type!r}: only 'rmsnorm' is built (InternLM)")
    _only(f"{section}.embed_grad_scale", m.embed_grad_scale, 1.0,
          "InternLM scales the gradient of its token embedding; the conv stem here is no token embedding")
    if m.dtype not in DTYPES:
        raise ConfigError(f"{section}.dtype={m.dtype!r}: expected one of {', '.join(DTYPES)}")
    if m.flavor is not None:
        if m.flavor not in MODEL_FLAVORS:
            raise ConfigError(f"{section}.flavor={m.flavor!r}: expected one of {', '.join(MODEL_FLAVORS)}")
        for key, value in MODEL_FLAVORS[m.flavor].items():
            if getattr(m, key) != value:
                raise ConfigError(f"{section}.{key}={getattr(m, key)} contradicts {section}.flavor={m.flavor!r}, "
                                  f"which gives {key}={value}; set one of them")
    if m.attn_backend is not None and m.attn_backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"{section}.attn_backend={m.attn_backend!r}: expected one of {', '.join(ATTENTION_BACKENDS)}")
    if m.use_flash_attn and m.attn_backend not in (None, "flash"):
        raise ConfigError(f"{section}.use_flash_attn=True asks for flash-attn but {section}.attn_backend="
                          f"{m.attn_backend!r}; set attn_backend='flash' or use_flash_attn=False")
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            f"{section}.hidden_size={m.hidden_size} is not divisible by num_attention_heads={m.num_attention_heads}"
        )
    if m.head_dim % 2:
        raise ConfigError(f"{section}: head_dim={m.head_dim} must be even for rotary embeddings")
    if not 0.0 <= m.checkpoint_fraction <= 1.0:
        raise ConfigError(f"{section}.checkpoint={m.checkpoint}: expected True/False or a fraction in [0, 1]")
    if not m.causal and m.perframe_atten:
        raise ConfigError(f"{section}.causal=False changes nothing while {section}.perframe_atten=True (a frame's "
                          "tokens and its state query attend to each other fully either way, and the joint branch is "
                          "block-causal); set perframe_atten=False for plain full attention, or leave causal=True")
    if m.prediction_init not in ("fresh", "representation"):
        raise ConfigError(f"{section}.prediction_init={m.prediction_init!r}: expected 'fresh' or 'representation'")
    if m.prediction_reprojection and not m.prediction_residual:
        raise ConfigError(f"{section}.prediction_reprojection=True reprojects the base of the residual state "
                          "prediction: it needs prediction_residual=True")
    if m.prediction_residual and m.prediction_init != "fresh":
        raise ConfigError(f"{section}: prediction_residual=True starts the predictor at the copy baseline already; "
                          f"prediction_init={m.prediction_init!r} would add the representation head on top of it "
                          "(use prediction_init='fresh')")
    if m.img_size % m.patch_size:
        raise ConfigError(
            f"{section}.lvm_config.conv_stem_config: img_size={m.img_size} is not a multiple of "
            f"patch_size={m.patch_size}"
        )


# Fields of the teacher section that must equal the student's: the teacher's weights are the student's EMA.
# (dtype, attn_backend / use_flash_attn and checkpoint may differ: how the teacher runs, not what it is.)
_TEACHER_MUST_MATCH = ("hidden_size", "num_layers", "num_attention_heads", "mlp_ratio", "output_dim", "lvm_config",
                       "head_hidden_dim", "head_bottleneck_dim", "rope_base", "layer_norm_epsilon", "perframe_atten",
                       "causal", "use_multi_crop", "norm_last_layer", "pose_frames", "num_joints", "pose_channels",
                       "init_std", "action_residual", "pose_normalization", "prediction_residual",
                       "prediction_reprojection")


def _validate_ranges(cfg: TrainConfig) -> None:
    """Numbers that would only fail (or silently do nothing) later in the run."""
    lowest = (("data.micro_num", cfg.data.micro_num, 1), ("data.total_steps", cfg.data.total_steps, 1),
              ("data.num_workers", cfg.data.num_workers, 0), ("adam.lr", cfg.adam.lr, 0.0),
              ("lr_scheduler.eta_min", cfg.lr_scheduler.eta_min, 0.0), ("monitor.log_every", cfg.monitor.log_every, 1),
              ("ckpt.checkpoint_every", cfg.ckpt.checkpoint_every, 1), ("ckpt.keep_last", cfg.ckpt.keep_last, 0),
              ("hybrid_zero_optimizer.max_consecutive_skipped_steps",
               cfg.hybrid_zero_optimizer.max_consecutive_skipped_steps, 0))
    for key, value, low in lowest:
        if not (math.isfinite(value) and value >= low):
            kind = "an integer" if isinstance(low, int) else "a finite number"
            raise ConfigError(f"{key}={value!r}: expected {kind} >= {low}")
    if not 0.0 <= cfg.data.flip_prob <= 1.0:
        raise ConfigError(f"data.flip_prob={cfg.data.flip_prob!r}: expected a probability in [0, 1]")


def _validate_teacher(cfg: TrainConfig) -> None:
    if cfg.model.teacher:
        raise ConfigError("model.teacher=True: the `model` section is the student (teacher=False); the teacher is "
                          "configured in the `teacher` section")
    if cfg.teacher is None:
        return
    _validate_model(cfg.teacher, "teacher")
    if not cfg.teacher.teacher:
        raise ConfigError("teacher.teacher=False: the `teacher` section configures the teacher (teacher=True)")
    if cfg.teacher.checkpoint_fraction:
        raise ConfigError(f"teacher.checkpoint={cfg.teacher.checkpoint!r}: activation checkpointing saves memory "
                          "for the backward pass, which the teacher never runs; set it False")
    for name in _TEACHER_MUST_MATCH:
        if getattr(cfg.teacher, name) != getattr(cfg.model, name):
            raise ConfigError(
                f"teacher.{name}={getattr(cfg.teacher, name)!r} differs from model.{name}="
                f"{getattr(cfg.model, name)!r}; the teacher is an EMA copy of the student and must match"
            )


def _validate_data(cfg: TrainConfig) -> None:
    data, model, loss, joint = cfg.data, cfg.model, cfg.loss, cfg.loss.is_joint
    if data.dataset_type not in DATASET_TYPES:
        raise ConfigError(f"data.dataset_type={data.dataset_type!r}: expected one of {', '.join(DATASET_TYPES)}")
    if data.dataset_type != "Generated" and joint != (data.dataset_type == "EgoExoClips"):
        raise ConfigError(
            f"loss.name={loss.name!r} needs data.dataset_type="
            f"{'EgoExoClips' if joint else 'WTVideos, WT1Video or ImgNetDINO'}, got {data.dataset_type!r}"
        )
    _only("data.seq_len", data.seq_len, 1, "every sample is its own sequence; its length follows from the crops")
    _only("data.micro_bsz", data.micro_bsz, 1, "data.micro_num is the per-GPU batch; samples are not packed")
    _only("data.pack_sample_into_one", data.pack_sample_into_one, False, "sequence packing is not built")
    _only("data.skip_batches", data.skip_batches, "", "skipping batch ranges is not built")
    _only("data.rampup_batch_size", data.rampup_batch_size, "", "a batch-size ramp-up is not built")
    if data.micro_num < 1 or data.gradient_accumulation < 1 or data.micro_num % data.gradient_accumulation:
        raise ConfigError(
            f"data.gradient_accumulation={data.gradient_accumulation} must divide data.micro_num={data.micro_num}"
        )
    if data.valid_every < 0 or data.valid_micro_num < 1:
        raise ConfigError(f"data.valid_every={data.valid_every} must be >= 0 and data.valid_micro_num="
                          f"{data.valid_micro_num} >= 1")
    if joint:
        if data.frames_per_clip not in (None, data.clip_steps):
            raise ConfigError(f"data.frames_per_clip={data.frames_per_clip}: a stage-2 sample holds the "
                              f"data.clip_steps={data.clip_steps} images of a clip")
        if data.frame_stride(True) % PROCESSED_FRAME_STEP or data.frame_stride(True) < 1:
            raise ConfigError(f"data.step_between_clips={data.step_between_clips}: clips start at undistorted images, "
                              f"every {PROCESSED_FRAME_STEP} frames; use a multiple of {PROCESSED_FRAME_STEP}")
        if data.use_egoexo is False:
            raise ConfigError("data.use_egoexo=False: stage 2 trains on Ego-Exo4D clips (data.egoexo_*)")
        if data.sample_fps is not None:
            raise ConfigError(f"data.sample_fps={data.sample_fps} samples the WalkingTours videos of stage 1; stage-2 "
                              "clips start every data.step_between_clips frames (unset data.sample_fps)")
        for key in ("train_folder", "valid_folder"):
            if getattr(data, key):
                raise ConfigError(f"data.{key}={getattr(data, key)!r}: stage 2 reads Ego-Exo4D clips from "
                                  "data.egoexo_frames_folder / egoexo_pose_folder (splits data.egoexo_train_split, "
                                  f"egoexo_valid_split); unset data.{key}")
    else:
        if data.sample_fps is not None and data.sample_fps <= 0:
            raise ConfigError(f"data.sample_fps={data.sample_fps}: expected frames per second > 0")
        if data.sample_fps is not None and data.step_between_clips is not None:
            raise ConfigError(f"data.sample_fps={data.sample_fps} and data.step_between_clips="
                              f"{data.step_between_clips} both say how often WalkingTours is sampled; set one")
        if data.frames_per_clip is not None:
            _only("data.frames_per_clip", data.frames_per_clip, 1, "stage-1 samples are single frames")
        if data.frame_stride(False) < 1:
            raise ConfigError(f"data.step_between_clips={data.step_between_clips} must be >= 1")
        if data.valid_every and not (data.folders("valid") or data.use_egoexo or data.dataset_type == "Generated"):
            raise ConfigError(f"data.valid_every={data.valid_every} needs data.valid_folder (the stage-1 "
                              "validation frames) or data.use_egoexo (the frames of egoexo_valid_split)")
        if data.folders("valid") and not data.valid_every:
            raise ConfigError(f"data.valid_folder={data.valid_folder!r} is read only by the validation runs; set "
                              "data.valid_every (steps between validations) or unset valid_folder")
    local = data.use_local_crop
    for key, value in (("model.use_multi_crop", model.use_multi_crop), ("loss.use_multicrop", loss.use_multicrop)):
        if value != local:
            raise ConfigError(f"{key}={value} but data.use_local_crop={local}: these say whether the student also "
                              "sees local crops; set them alike")
    n_local = data.local_crops_number if local else 0
    if loss.use_multicrop and loss.local_crops_number != n_local:
        raise ConfigError(f"loss.local_crops_number={loss.local_crops_number} differs from the data's {n_local} local "
                          f"crops (data.local_crops_number={data.local_crops_number}, use_local_crop={local})")
    patch = model.patch_size
    for key, size in (("data.vid_crop_size", data.vid_crop_size), ("data.local_crop_size", data.local_crop_size),
                      ("data.pred_img_size", data.pred_img_size)):
        if size % patch:
            raise ConfigError(f"{key}={size} is not a multiple of the patch size "
                              f"(model.lvm_config.conv_stem_config.patch_size={patch})")
    if model.img_size != data.vid_crop_size:
        raise ConfigError(f"model.lvm_config.conv_stem_config.img_size={model.img_size} differs from "
                          f"data.vid_crop_size={data.vid_crop_size}, the size the model is trained on")
    tokens = {"global": (data.vid_crop_size // patch) ** 2, "local": (data.local_crop_size // patch) ** 2}
    for key, value, want, what in (
            ("data.num_frame_tokens", data.num_frame_tokens, tokens["global"],
             f"data.vid_crop_size={data.vid_crop_size}"),
            ("loss.global_token_len", loss.global_token_len, tokens["global"],
             f"data.vid_crop_size={data.vid_crop_size}"),
            ("loss.local_token_len", loss.local_token_len, tokens["local"],
             f"data.local_crop_size={data.local_crop_size}"),
            ("loss.nframes", loss.nframes, data.clip_steps if joint else 1,
             f"a stage-{cfg.stage} sample (data.clip_steps={data.clip_steps})" if joint else "a stage-1 sample"),
            ("loss.batch_size", loss.batch_size, data.micro_num // data.gradient_accumulation,
             f"data.micro_num={data.micro_num} / gradient_accumulation={data.gradient_accumulation}")):
        if value is not None and value != want:
            unit = "frames" if key == "loss.nframes" else "samples" if key == "loss.batch_size" else \
                f"tokens of model.lvm_config.conv_stem_config.patch_size={patch}px"
            raise ConfigError(f"{key}={value} but {what} gives {want} {unit}")
    if data.clip_frames % data.clip_steps or data.steps_per_clip != model.pose_frames:
        raise ConfigError(
            f"data.clip_frames={data.clip_frames} / data.clip_steps={data.clip_steps} must equal "
            f"model.pose_frames={model.pose_frames} poses per step"
        )
    if data.pose_frame not in POSE_FRAMES:
        raise ConfigError(f"data.pose_frame={data.pose_frame!r}: expected one of {', '.join(POSE_FRAMES)}")
    if model.prediction_reprojection and not data.camera_motion:
        raise ConfigError("model.prediction_reprojection=True reprojects frame t by each step's camera rotation: "
                          "set data.camera_motion=True so the clips carry it")
    if loss.act_rollout_passes and not (joint and 0 < loss.act_rollout_passes <= data.clip_steps - 2):
        raise ConfigError(f"loss.act_rollout_passes={loss.act_rollout_passes}: expected 0, or in a stage-2 config 1 "
                          f"to data.clip_steps - 2 = {data.clip_steps - 2} (after that many passes every step is "
                          f"already predicted from the model's own earlier predictions)")
    if data.clip_color_change and not joint:
        raise ConfigError("data.clip_color_change=True changes the colours of the clips of stage 2: it needs a stage-2 "
                          "config (loss.name='joint')")
    if data.calibration_takes < 0:
        raise ConfigError(f"data.calibration_takes={data.calibration_takes} must be >= 0")
    if data.calibration_takes and not (joint and model.prediction_residual):
        raise ConfigError(f"data.calibration_takes={data.calibration_takes} holds training takes out to calibrate the "
                          "learned change of the residual state prediction: it needs a stage-2 config with "
                          "model.prediction_residual=True")
    if data.calibration_takes and data.dataset_type != "EgoExoClips":
        raise ConfigError(f"data.calibration_takes={data.calibration_takes} holds out Ego-Exo4D takes: it needs "
                          f"data.dataset_type='EgoExoClips', not {data.dataset_type!r}")


def _validate_optimisation(cfg: TrainConfig) -> None:
    data, lr, kd = cfg.data, cfg.lr_scheduler, cfg.kd_config
    if cfg.adam.adam_beta2_c != cfg.beta2_scheduler.c:
        raise ConfigError(f"adam.adam_beta2_c={cfg.adam.adam_beta2_c} differs from beta2_scheduler.c="
                          f"{cfg.beta2_scheduler.c}; the schedule reads beta2_scheduler.c (set both)")
    if cfg.beta2_scheduler.c < 0:
        raise ConfigError(f"beta2_scheduler.c={cfg.beta2_scheduler.c} must be >= 0")
    _only("beta2_scheduler.cur_iter", cfg.beta2_scheduler.cur_iter, -1, "the schedule's clock is the optimizer "
          "step, restored on resume")
    _only("lr_scheduler.init_steps", lr.init_steps, 0, "the warm-up starts at step 0")
    _only("lr_scheduler.last_epoch", lr.last_epoch, -1, "the schedule's clock is the optimizer step, restored on "
          "resume")
    if lr.total_steps != data.total_steps:
        raise ConfigError(
            f"lr_scheduler.total_steps={lr.total_steps} differs from data.total_steps={data.total_steps}"
        )
    if lr.warmup_steps is not None and lr.warmup_ratio and round(lr.total_steps * lr.warmup_ratio) != lr.warmup_steps:
        raise ConfigError(f"lr_scheduler.warmup_ratio={lr.warmup_ratio} of lr_scheduler.total_steps={lr.total_steps} "
                          f"is {round(lr.total_steps * lr.warmup_ratio)} warm-up steps, but lr_scheduler.warmup_steps="
                          f"{lr.warmup_steps}; set one of them, e.g. --opt lr_scheduler.warmup_steps="
                          f"{round(lr.total_steps * lr.warmup_ratio)}")
    if not 0 <= lr.resolved_warmup_steps() <= data.total_steps:
        raise ConfigError(f"lr_scheduler: the warm-up ({lr.resolved_warmup_steps()} steps) is longer than "
                          f"data.total_steps={data.total_steps}")
    if cfg.momentum_scheduler.epochs is not None and cfg.momentum_scheduler.epochs <= 0:
        raise ConfigError(f"momentum_scheduler.epochs={cfg.momentum_scheduler.epochs} must be > 0")
    if not 0 <= cfg.loss.freeze_last_layer_steps <= data.total_steps:
        raise ConfigError(f"loss.freeze_last_layer_steps={cfg.loss.freeze_last_layer_steps} must be in "
                          f"[0, data.total_steps={data.total_steps}]")
    for key, value, want, why in (
            ("gt_weight", kd.gt_weight, 0.0, "there are no ground-truth labels to supervise with"),
            ("kd_weight", kd.kd_weight, 1.0, "the loss terms are weighted by loss.rep_weight/pred_weight/act_weight"),
            ("type", kd.type, cfg.loss.name, "it restates loss.name"),
            ("temperature", kd.temperature, cfg.momentum_scheduler.momentum_teacher,
             "it is the teacher's EMA momentum, which the authors' files restate from "
             "momentum_scheduler.momentum_teacher")):
        if value is not None:
            _only(f"kd_config.{key}", value, want, why)


def validate(cfg: TrainConfig) -> None:
    """Cross-section checks. Raises ConfigError naming the offending key."""
    _validate_ranges(cfg)
    _validate_model(cfg.model, "model")
    _validate_teacher(cfg)
    for key, value in (("model_type", cfg.model_type), ("teacher_type", cfg.teacher_type)):
        if value not in MODEL_TYPES:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(MODEL_TYPES)} (both build EgoAgent; "
                              "InternLM's text model is not built)")
    loss = cfg.loss
    if loss.name not in LOSS_NAMES:
        raise ConfigError(f"loss.name={loss.name!r}: expected one of {', '.join(LOSS_NAMES)}")
    if loss.is_joint and not cfg.model.causal:
        raise ConfigError("model.causal=False would let the action query of step t see later frames and poses; the "
                          "joint model (loss.name='joint') needs causal=True")
    _only("loss.incld_cls_token", loss.incld_cls_token, True, "the DINO loss is on the state query token")
    if loss.use_tracking:
        raise _not_built("DoRA's tracking loss", "loss.use_tracking=True")
    if loss.out_dim != cfg.model.output_dim:
        raise ConfigError(f"loss.out_dim={loss.out_dim} differs from model.output_dim={cfg.model.output_dim}")
    if loss.grad_accum != cfg.data.gradient_accumulation:
        raise ConfigError(
            f"loss.grad_accum={loss.grad_accum} differs from data.gradient_accumulation="
            f"{cfg.data.gradient_accumulation}"
        )
    _validate_data(cfg)
    _validate_optimisation(cfg)
    par = cfg.parallel
    if par.pipeline_size != 1:
        raise _not_built("pipeline parallelism", f"parallel.pipeline.size={par.pipeline_size}")
    if par.tensor_size != 1:
        raise _not_built("tensor parallelism", f"parallel.tensor={par.tensor_size}")
    if par.sequence_parallel:
        raise _not_built("sequence parallelism", "parallel.sequence_parallel=True")
    info = cfg.ckpt.init_source()
    if info is not None:
        bad = [c for c in info.content if c not in ("model", "all")]
        if bad:
            raise ConfigError(f"ckpt.load_ckpt_info.content: {bad} not understood; use ('model',) or ('all',)")
        _only("ckpt.load_ckpt_info.ckpt_type", info.ckpt_type, "internlm", "this framework's own checkpoints")
