"""The typed config: one dataclass per section of an InternLM-style config file.

Field names are exactly the keys of the authors' configs (docs/configs.md), so their files load unchanged.
Keys marked "compat" are accepted because the authors' files set them, but they configure InternLM machinery
that has no counterpart here (token embeddings, packing, feishu alerts ...); they have no effect.
Keys marked "added" are ours. A feature that is switched on but not built raises ConfigError in
``validate`` rather than being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .typed import ConfigError

# ----------------------------------------------------------------------------------------------- model


@dataclass
class ConvStemConfig:
    img_size: int = 224
    patch_size: int = 16


@dataclass
class VQEmbeddingConfig:  # compat: VQGAN token embedding (not built, must stay disabled)
    vq_model_path: str = ""
    embedding_dim: int = 0
    freeze_vq_model: bool = True


@dataclass
class VQEncoderConfig:  # compat: VQGAN encoder (not built, must stay disabled)
    vq_model_path: str = ""
    freeze_vq_model: bool = True


@dataclass
class LVMConfig:
    enable: bool = False  # VQGAN embedding of images: not built
    embedding_cfg: VQEmbeddingConfig = field(default_factory=VQEmbeddingConfig)
    enable_conv_stem: bool = True  # the conv image projector of the paper (Table 8)
    conv_stem_config: ConvStemConfig = field(default_factory=ConvStemConfig)
    enable_encoder: bool = False  # VQGAN encoder: not built
    encoder_cfg: VQEncoderConfig = field(default_factory=VQEncoderConfig)


DTYPES = ("torch.float32", "torch.tf32", "torch.float16", "torch.half", "torch.bfloat16")


@dataclass
class ModelConfig:
    teacher: bool = False  # True in the `teacher` section; the teacher is always an EMA copy of the student
    perframe_atten: bool = True  # block-causal: image tokens of one frame see each other
    use_cls_token: bool = True  # the state query token; the DINO feature is read there
    use_multi_crop: bool = True
    use_tracking: bool = False  # DoRA tracking: not built
    head_type: str = "dino"
    checkpoint: Union[bool, float] = False  # fraction of blocks with activation checkpointing
    num_attention_heads: int = 8
    embed_split_hidden: bool = True  # compat
    vocab_size: int = 8192  # compat (VQGAN codebook)
    embed_grad_scale: float = 1.0  # compat
    parallel_output: bool = True  # compat
    hidden_size: int = 1024
    output_dim: int = 65536  # DINO prototypes
    num_layers: int = 22
    mlp_ratio: float = 8 / 3
    apply_post_layer_norm: bool = False
    dtype: str = "torch.float32"
    norm_type: str = "rmsnorm"
    layer_norm_epsilon: float = 1e-6
    use_flash_attn: bool = False
    return_track: bool = False  # DoRA tracking attention output: not built
    causal: bool = True
    frames2batch: bool = False  # not built
    num_chunks: int = 1  # interleaved pipeline chunks: only 1
    lvm_config: LVMConfig = field(default_factory=LVMConfig)
    # added
    attn_backend: Optional[str] = None  # sdpa | flex | flash; None: flash if use_flash_attn else sdpa
    head_hidden_dim: int = 2048  # DINO head MLP width (Table 8)
    head_bottleneck_dim: int = 256
    norm_last_layer: bool = True  # DINO: weight-normalised last layer with its norm fixed to 1
    rope_base: float = 10000.0
    pose_frames: int = 5  # poses per step (one action token)
    num_joints: int = 17
    pose_channels: int = 4  # x, y, z, visibility
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


@dataclass
class DataConfig:
    seq_len: int = 1  # compat
    micro_num: int = 64  # samples (frames in stage 1, clips in stage 2) per optimizer step per GPU
    micro_bsz: int = 1  # compat: frames per sample in stage 1 (= frames_per_clip)
    valid_micro_num: int = 2  # compat
    valid_every: int = 0  # compat: evaluation runs through the eval_* scripts
    gradient_accumulation: int = 1  # the per-GPU batch is split into this many chunks
    pack_sample_into_one: bool = False  # compat
    train_one_epoch: bool = False  # stop after one pass over the data
    total_steps: int = 1000
    skip_batches: str = ""  # compat
    rampup_batch_size: str = ""  # compat
    min_length: int = 0  # compat
    train_folder: Union[list[str], str, None] = None  # WalkingTours mp4 files or frame folders
    valid_folder: Union[list[str], str, None] = None
    empty_cache_and_diag_interval: int = 0  # compat
    diag_outlier_ratio: float = 1.1  # compat
    padding_token: int = 0  # compat
    frames_per_clip: int = 1
    dataset_type: str = "WTVideos"  # "Generated": random tensors of the real shapes (benchmarks, smoke tests)
    step_between_clips: int = 30  # WalkingTours: frames between two samples of one video
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    use_local_crop: bool = True
    use_egoexo: bool = False  # stage 1: add the Ego-Exo4D frames to the WalkingTours frames
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crops_number: int = 6
    init_crop_size: int = 300  # DoRA's first RandomResizedCrop
    vid_crop_size: int = 224  # global crop size
    local_crop_size: int = 112
    norm_vid: bool = True  # ImageNet mean/std normalisation
    num_frame_tokens: int = 196
    # added
    egoexo_frames_folder: str = "data/egoexo4d_v2/processed_data"
    egoexo_pose_folder: str = "data/egoexo4d_body_pose"
    egoexo_train_split: str = "train"
    egoexo_valid_split: str = "val"
    clip_frames: int = 20  # one clip: 20 consecutive annotated frames at 30 fps
    clip_steps: int = 4  # ... split into T=4 steps of 5 frames
    pred_img_size: int = 224  # full frames resized for prediction/action (teacher targets too)
    init_crop_scale: tuple[float, float] = (0.2, 1.0)
    num_workers: int = 2
    seed: int = 0  # data order and augmentation; train.py --seed overrides

    @property
    def steps_per_clip(self) -> int:
        return self.clip_frames // self.clip_steps

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
    incld_cls_token: bool = True
    use_multicrop: bool = True
    use_tracking: bool = False  # not built
    out_dim: int = 65536
    local_crops_number: int = 6
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 3
    epochs: float = 101  # an "epoch" here is total_steps / epochs optimizer steps (for the warm-ups above)
    grad_accum: int = 1  # compat: must equal data.gradient_accumulation
    batch_size: int = 64  # compat: per-chunk batch
    global_token_len: int = 196  # compat: checked against the crop size
    local_token_len: int = 49
    nframes: int = 1
    # added
    student_temp: float = 0.1
    center_momentum: float = 0.9
    rep_weight: float = 1.0  # w_rep (paper eq. 4; the values are lost from the text)
    pred_weight: float = 1.0  # w_pred
    act_weight: float = 1.0  # w_act

    @property
    def is_joint(self) -> bool:
        return self.name == "joint"


# ----------------------------------------------------------------------------------- optimisation


@dataclass
class AdamConfig:
    lr: float = 5e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_beta2_c: float = 0.0
    adam_eps: float = 1e-8
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    # added
    fused: Optional[bool] = None  # None: torch's fused AdamW on CUDA, foreach elsewhere


@dataclass
class LrSchedulerConfig:
    total_steps: int = 1000
    init_steps: int = 0  # compat
    warmup_ratio: float = 0.1
    eta_min: float = 5e-6
    last_epoch: int = -1  # compat
    # added
    warmup_steps: Optional[int] = None  # overrides warmup_ratio (stage 2: 1800)

    def resolved_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.total_steps * self.warmup_ratio))


@dataclass
class Beta2SchedulerConfig:
    init_beta2: float = 0.999
    c: float = 0.0  # only a constant beta2 (c = 0) is built
    cur_iter: int = -1  # compat


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
    overlap_sync_grad: bool = False  # compat
    overlap_sync_param: bool = False  # compat
    reduce_bucket_size: int = 512 * 1024 * 1024  # DDP bucket size in bytes
    clip_grad_norm: float = 1.0


@dataclass
class MomentumSchedulerConfig:
    momentum_teacher: float = 0.996
    epochs: float = 101  # compat: the cosine runs over data.total_steps
    # added
    momentum_teacher_end: float = 1.0


@dataclass
class KDConfig:  # compat: the authors' distillation block; the EMA teacher is configured elsewhere
    gt_weight: float = 0.0
    kd_weight: float = 1.0
    type: str = "dinoimgcls"
    temperature: float = 0.996


# --------------------------------------------------------------------------------------- parallel


@dataclass
class Zero1Config:
    size: int = -1  # <= 0: shard over the whole data-parallel group; 1: no sharding
    fsdp: bool = False  # shard parameters too (FSDP2 fully_shard)


@dataclass
class PipelineConfig:
    size: int = 1
    interleaved_overlap: bool = True  # compat


@dataclass
class TensorConfig:
    size: int = 1
    mode: str = "mtp"  # compat


@dataclass
class ParallelConfig:
    zero1: Union[int, Zero1Config] = 1
    pipeline: Union[int, PipelineConfig] = field(default_factory=PipelineConfig)
    tensor: Union[int, TensorConfig] = 1
    sequence_parallel: bool = False
    # added
    timeout_s: float = 1800.0  # a collective stuck longer than this fails the job instead of hanging

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
    ckpt_type: str = "internlm"  # compat


@dataclass
class CkptConfig:
    enable_save_ckpt: bool = True
    save_ckpt_folder: Optional[str] = None
    save_teacher_ckpt_folder: Optional[str] = None  # compat: the teacher is saved inside every checkpoint
    load_ckpt_info: Optional[LoadCkptInfo] = None  # initialise from another run (stage 2 from stage 1)
    load_ckpt_folder: Optional[str] = None  # same as load_ckpt_info(path=..., content=("model",))
    checkpoint_every: int = 1000
    async_upload: bool = False  # compat (boto3 upload)
    async_upload_tmp_folder: str = ""  # compat
    oss_snapshot_freq: int = 0  # compat
    auto_resume: bool = True  # continue from the newest complete checkpoint in save_ckpt_folder
    # added
    async_save: bool = False  # torch.distributed.checkpoint.async_save for the sharded training state
    keep_last: int = 0  # > 0: delete older complete checkpoints, keeping this many

    def init_source(self) -> Optional[LoadCkptInfo]:
        if self.load_ckpt_info is not None:
            return self.load_ckpt_info
        if self.load_ckpt_folder:
            return LoadCkptInfo(path=self.load_ckpt_folder)
        return None


# ----------------------------------------------------------------------------------------- monitor


@dataclass
class AlertConfig:  # compat
    enable_feishu_alert: bool = False
    feishu_alert_address: Optional[str] = None
    light_monitor_address: Optional[str] = None


@dataclass
class MonitorConfig:
    alert: AlertConfig = field(default_factory=AlertConfig)
    # added
    log_every: int = 10  # console line every N steps (TensorBoard gets every step)
    tensorboard_folder: Optional[str] = None  # default: {save_ckpt_folder}/tensorboard
    peak_tflops: Optional[float] = None  # for MFU; None: detected from the GPU name
    metrics_file: bool = True  # rank 0 appends every step's scalars to {save_ckpt_folder}/metrics.jsonl
    record_sample_ids: bool = False  # every rank appends its batches' sample ids to samples_rank{r}.jsonl (audits)


# ----------------------------------------------------------------------------------------- the run

MODEL_TYPES = ("INTERNLM_VQGAN", "INTERNLM", "EGOAGENT")


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
    teacher_ckpt_folder: Optional[str] = None  # compat
    cudnn_deterministic: bool = False
    cudnn_benchmark: bool = False
    JOB_NAME: str = "egoagent"
    constants: dict[str, Any] = field(default_factory=dict)
    source_file: Optional[str] = None

    @property
    def stage(self) -> int:
        return 2 if self.loss.is_joint else 1


def _not_built(what: str, key: str) -> ConfigError:
    return ConfigError(f"{key}: {what} is configured on, but this framework does not build it; set it off")


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
    if m.dtype not in DTYPES:
        raise ConfigError(f"{section}.dtype={m.dtype!r}: expected one of {', '.join(DTYPES)}")
    from internlm.model.attention import BACKENDS  # the kernels' own list (imported here: model imports config)

    if m.attn_backend is not None and m.attn_backend not in BACKENDS:
        raise ConfigError(f"{section}.attn_backend={m.attn_backend!r}: expected one of {', '.join(BACKENDS)}")
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            f"{section}.hidden_size={m.hidden_size} is not divisible by num_attention_heads={m.num_attention_heads}"
        )
    if m.head_dim % 2:
        raise ConfigError(f"{section}: head_dim={m.head_dim} must be even for rotary embeddings")
    if not 0.0 <= m.checkpoint_fraction <= 1.0:
        raise ConfigError(f"{section}.checkpoint={m.checkpoint}: expected True/False or a fraction in [0, 1]")
    if m.img_size % m.patch_size:
        raise ConfigError(
            f"{section}.lvm_config.conv_stem_config: img_size={m.img_size} is not a multiple of "
            f"patch_size={m.patch_size}"
        )


# Fields of the teacher section that must equal the student's: the teacher is an EMA copy of the student.
_TEACHER_MUST_MATCH = ("hidden_size", "num_layers", "num_attention_heads", "mlp_ratio", "output_dim", "lvm_config",
                       "head_hidden_dim", "head_bottleneck_dim", "rope_base", "layer_norm_epsilon", "perframe_atten",
                       "causal")


def validate(cfg: TrainConfig) -> None:
    """Cross-section checks. Raises ConfigError naming the offending key."""
    _validate_model(cfg.model, "model")
    if cfg.teacher is not None:
        _validate_model(cfg.teacher, "teacher")
        for name in _TEACHER_MUST_MATCH:
            if getattr(cfg.teacher, name) != getattr(cfg.model, name):
                raise ConfigError(
                    f"teacher.{name}={getattr(cfg.teacher, name)!r} differs from model.{name}="
                    f"{getattr(cfg.model, name)!r}; the teacher is an EMA copy of the student and must match"
                )
    for key in ("model_type", "teacher_type"):
        if getattr(cfg, key) not in MODEL_TYPES:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: expected one of {', '.join(MODEL_TYPES)}")
    loss, data, model = cfg.loss, cfg.data, cfg.model
    if loss.name not in LOSS_NAMES:
        raise ConfigError(f"loss.name={loss.name!r}: expected one of {', '.join(LOSS_NAMES)}")
    if loss.use_tracking:
        raise _not_built("DoRA's tracking loss", "loss.use_tracking=True")
    if loss.out_dim != model.output_dim:
        raise ConfigError(f"loss.out_dim={loss.out_dim} differs from model.output_dim={model.output_dim}")
    if data.dataset_type not in DATASET_TYPES:
        raise ConfigError(f"data.dataset_type={data.dataset_type!r}: expected one of {', '.join(DATASET_TYPES)}")
    if data.dataset_type != "Generated" and loss.is_joint != (data.dataset_type == "EgoExoClips"):
        raise ConfigError(
            f"loss.name={loss.name!r} needs data.dataset_type="
            f"{'EgoExoClips' if loss.is_joint else 'WTVideos, WT1Video or ImgNetDINO'}, got {data.dataset_type!r}"
        )
    n_local = data.local_crops_number if data.use_local_crop else 0
    if loss.use_multicrop and loss.local_crops_number != n_local:
        raise ConfigError(f"loss.local_crops_number={loss.local_crops_number} differs from the data's "
                          f"{n_local} local crops")
    if data.gradient_accumulation < 1 or data.micro_num % data.gradient_accumulation:
        raise ConfigError(
            f"data.gradient_accumulation={data.gradient_accumulation} must divide data.micro_num={data.micro_num}"
        )
    if loss.grad_accum != data.gradient_accumulation:
        raise ConfigError(
            f"loss.grad_accum={loss.grad_accum} differs from data.gradient_accumulation={data.gradient_accumulation}"
        )
    patch = model.patch_size
    for key, size in (("data.vid_crop_size", data.vid_crop_size), ("data.local_crop_size", data.local_crop_size),
                      ("data.pred_img_size", data.pred_img_size)):
        if size % patch:
            raise ConfigError(f"{key}={size} is not a multiple of the patch size {patch}")
    if (data.vid_crop_size // patch) ** 2 != data.num_frame_tokens:
        raise ConfigError(
            f"data.num_frame_tokens={data.num_frame_tokens} but a {data.vid_crop_size}px crop gives "
            f"{(data.vid_crop_size // patch) ** 2} tokens of {patch}px"
        )
    if data.clip_frames % data.clip_steps or data.steps_per_clip != model.pose_frames:
        raise ConfigError(
            f"data.clip_frames={data.clip_frames} / data.clip_steps={data.clip_steps} must equal "
            f"model.pose_frames={model.pose_frames} poses per step"
        )
    par = cfg.parallel
    if par.pipeline_size != 1:
        raise _not_built("pipeline parallelism", f"parallel.pipeline.size={par.pipeline_size}")
    if par.tensor_size != 1:
        raise _not_built("tensor parallelism", f"parallel.tensor={par.tensor_size}")
    if par.sequence_parallel:
        raise _not_built("sequence parallelism", "parallel.sequence_parallel=True")
    if cfg.beta2_scheduler.c != 0:
        raise _not_built("a beta2 schedule", f"beta2_scheduler.c={cfg.beta2_scheduler.c}")
    if cfg.adam.adam_beta2_c != 0:
        raise _not_built("a beta2 schedule", f"adam.adam_beta2_c={cfg.adam.adam_beta2_c}")
    if cfg.lr_scheduler.total_steps != data.total_steps:
        raise ConfigError(
            f"lr_scheduler.total_steps={cfg.lr_scheduler.total_steps} differs from data.total_steps={data.total_steps}"
        )
    if not 0 <= cfg.lr_scheduler.resolved_warmup_steps() <= data.total_steps:
        raise ConfigError("lr_scheduler: the warm-up is longer than data.total_steps")
    info = cfg.ckpt.init_source()
    if info is not None:
        bad = [c for c in info.content if c not in ("model", "all")]
        if bad:
            raise ConfigError(f"ckpt.load_ckpt_info.content: {bad} not understood; use ('model',) or ('all',)")
    if cfg.ckpt.checkpoint_every < 1:
        raise ConfigError(f"ckpt.checkpoint_every={cfg.ckpt.checkpoint_every} must be >= 1")
