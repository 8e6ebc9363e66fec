# Stage 1: egocentric visual representation pretraining of EgoAgent-300M (DINO on WalkingTours + Ego-Exo4D
# frames). Paper Table 7 architecture; the authors' stage-1 recipe (lr 5e-4, teacher temperature 0.04,
# 64 frames x 16 GPUs, 101 epochs of 7,614,851 frames).
# Launch: scripts_train/source_slurm_train_stage1_contrastive_w_tokenizer.sh NODES <this file> WORKERS

JOB_NAME = "dino_lr5e-4_tmp004_300M"
N_GPUS = 16

HIDDEN_SIZE = 1024
NUM_ATTENTION_HEAD = 8
NUM_LAYER = 22
MLP_RATIO = 8 / 3
OUTPUT_DIM = 65536
IMAGE_SIZE = 224
PATCH_SIZE = 16
N_FRAME_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 196
N_LOCAL_TOKENS = (IMAGE_SIZE // 2 // PATCH_SIZE) ** 2  # 49
N_LOCAL_CROPS = 6

LEARNING_RATE = 5e-4
LR_ETA_MIN = 5e-6
TEMPERATURE = 0.04
BATCH_SIZE = 64  # frames per GPU per step
BATCH_ACCUM = 4  # the 64 frames go through the model in 4 chunks of 16
EPOCHS = 101
LEN_DATASET = 7614851  # WalkingTours + Ego-Exo4D frames
ONE_EPOCH_ITERS = LEN_DATASET // (BATCH_SIZE * N_GPUS)
TOTAL_STEPS = ONE_EPOCH_ITERS * EPOCHS
FPS = 30

SAVE_CKPT_FOLDER = f"local:save_ckpt/{JOB_NAME}"

MODEL = dict(
    perframe_atten=True,
    use_cls_token=True,
    use_multi_crop=True,
    use_tracking=False,
    head_type="dino",
    num_attention_heads=NUM_ATTENTION_HEAD,
    embed_split_hidden=True,
    vocab_size=8192,
    embed_grad_scale=1,
    parallel_output=True,
    hidden_size=HIDDEN_SIZE,
    output_dim=OUTPUT_DIM,
    num_layers=NUM_LAYER,
    mlp_ratio=MLP_RATIO,
    apply_post_layer_norm=False,
    dtype="torch.float16",
    norm_type="rmsnorm",
    layer_norm_epsilon=1e-6,
    # Stage 1 has no mask (image tokens + state query attend to each other), so PyTorch's SDPA already runs
    # its built-in flash kernel; set attn_backend="flash" to use the flash-attn package instead.
    use_flash_attn=False,
    attn_backend="sdpa",
    return_track=False,
    causal=True,
    frames2batch=False,
    num_chunks=1,
    lvm_config=dict(
        enable=False,
        embedding_cfg=dict(vq_model_path="resources/vqgan_model", embedding_dim=HIDDEN_SIZE, freeze_vq_model=True),
        enable_conv_stem=True,
        conv_stem_config=dict(img_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
        enable_encoder=False,
        encoder_cfg=dict(vq_model_path="resources/vqgan_model", freeze_vq_model=True),
    ),
)

model_type = "INTERNLM_VQGAN"
model = dict(MODEL, teacher=False, checkpoint=1)  # recompute every block's activations

teacher_type = "INTERNLM_VQGAN"
teacher_ckpt_folder = f"local:llm_teacher_ckpts/{JOB_NAME}"
teacher = dict(MODEL, teacher=True, checkpoint=False)
kd_config = dict(gt_weight=0.0, kd_weight=1.0, type="dinoimgcls", temperature=0.996)
momentum_scheduler = dict(momentum_teacher=0.996, epochs=EPOCHS)

TRAIN_FOLDER = [
    f"data/WTour/Walking_Tour_{city}.mp4"
    for city in ("Venice", "Amsterdam", "Bangkok", "Chiang_Mai", "Istanbul", "Kuala_Lumpur", "Singapore",
                 "Stockholm", "Wildlife", "Zurich")
]

data = dict(
    seq_len=1,
    micro_num=BATCH_SIZE,
    micro_bsz=1,
    valid_micro_num=2,
    valid_every=0,
    gradient_accumulation=BATCH_ACCUM,
    pack_sample_into_one=False,
    train_one_epoch=False,
    total_steps=TOTAL_STEPS,
    skip_batches="",
    rampup_batch_size="",
    min_length=50,
    train_folder=TRAIN_FOLDER,
    valid_folder=None,
    empty_cache_and_diag_interval=10000,
    diag_outlier_ratio=1.1,
    padding_token=8331,
    frames_per_clip=1,
    dataset_type="WTVideos",
    step_between_clips=FPS,
    global_crops_scale=(0.4, 1.0),
    use_local_crop=True,
    use_egoexo=True,
    local_crops_scale=(0.05, 0.4),
    local_crops_number=N_LOCAL_CROPS,
    init_crop_size=300,
    vid_crop_size=IMAGE_SIZE,
    local_crop_size=IMAGE_SIZE // 2,
    norm_vid=True,
    num_frame_tokens=N_FRAME_TOKENS,
    egoexo_frames_folder="data/egoexo4d_v2/processed_data",
    egoexo_pose_folder="data/egoexo4d_body_pose",
    num_workers=8,
)

ckpt = dict(
    enable_save_ckpt=True,
    save_ckpt_folder=SAVE_CKPT_FOLDER,
    save_teacher_ckpt_folder=f"local:save_ckpt/{JOB_NAME}_teacher",
    checkpoint_every=ONE_EPOCH_ITERS,
    async_upload=True,
    async_upload_tmp_folder="internlm_tmp_ckpt/",
    oss_snapshot_freq=0,
    auto_resume=True,
)

grad_scaler = dict(
    fp16=dict(initial_scale=2**16, min_scale=1, growth_interval=1000),
    growth_factor=2,
    backoff_factor=0.5,
    max_scale=2**24,
    hysteresis=2,
)

hybrid_zero_optimizer = dict(
    overlap_sync_grad=False,
    overlap_sync_param=False,
    reduce_bucket_size=512 * 1024 * 1024,
    clip_grad_norm=1.0,
)

loss = dict(
    name="dinoimgcls",
    incld_cls_token=True,
    use_multicrop=True,
    use_tracking=False,
    out_dim=OUTPUT_DIM,
    local_crops_number=N_LOCAL_CROPS,
    warmup_teacher_temp=TEMPERATURE,
    teacher_temp=TEMPERATURE,
    warmup_teacher_temp_epochs=3,
    epochs=EPOCHS,
    grad_accum=BATCH_ACCUM,
    batch_size=BATCH_SIZE // BATCH_ACCUM,
    global_token_len=N_FRAME_TOKENS,
    local_token_len=N_LOCAL_TOKENS,
    nframes=1,
)

adam = dict(
    lr=LEARNING_RATE,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_beta2_c=0,
    adam_eps=1e-8,
    weight_decay=0.04,
    weight_decay_end=0.4,
)

lr_scheduler = dict(total_steps=TOTAL_STEPS, init_steps=0, warmup_ratio=0.1, eta_min=LR_ETA_MIN, last_epoch=-1)
beta2_scheduler = dict(init_beta2=adam["adam_beta2"], c=adam["adam_beta2_c"], cur_iter=-1)

# zero1: 1 = plain data parallel; <= 0 or > 1 = shard the optimizer state (ZeRO-1);
# dict(size=-1, fsdp=True) = shard parameters too (FSDP2).
parallel = dict(zero1=-1, pipeline=dict(size=1, interleaved_overlap=True), tensor=1, sequence_parallel=False)

cudnn_deterministic = False
cudnn_benchmark = False

monitor = dict(
    alert=dict(enable_feishu_alert=False, feishu_alert_address=None, light_monitor_address=None),
    log_every=10,
)
