# Stage 2 of the CPU demo: joint representation / prediction / action training of the tiny EgoAgent on the
# synthetic world's Ego-Exo4D-style clips, initialised from the stage-1 demo run.
# Same code path as configs/joint_train/*, scaled down to run in minutes on 2 CPU cores.

JOB_NAME = "demo_stage2"
STAGE1_JOB_NAME = "demo_stage1"
DATA_ROOT = "data/synthetic"

HIDDEN_SIZE = 128
NUM_ATTENTION_HEAD = 4
NUM_LAYER = 4
OUTPUT_DIM = 256  # DINO prototypes, sized to ~1,000 training frames (the paper's 65,536 stay near-uniform)
PATCH_SIZE = 8
IMAGE_SIZE = 32  # frames and global crops; local crops are half (16 tokens per frame with 8-px patches)
N_LOCAL_CROPS = 6
BATCH_SIZE = 16
TOTAL_STEPS = 1200  # 600 left the action pathway 0.7 cm further behind siMLPe (docs/demo_findings.md)

MODEL = dict(
    perframe_atten=True,
    use_cls_token=True,
    use_multi_crop=True,
    use_tracking=False,
    head_type="dino",
    num_attention_heads=NUM_ATTENTION_HEAD,
    hidden_size=HIDDEN_SIZE,
    output_dim=OUTPUT_DIM,
    num_layers=NUM_LAYER,
    mlp_ratio=8 / 3,
    dtype="torch.float32",
    norm_type="rmsnorm",
    layer_norm_epsilon=1e-6,
    use_flash_attn=False,
    attn_backend="sdpa",
    return_track=False,
    causal=True,
    lvm_config=dict(enable=False, enable_conv_stem=True,
                    conv_stem_config=dict(img_size=IMAGE_SIZE, patch_size=PATCH_SIZE), enable_encoder=False),
    head_hidden_dim=512,
    head_bottleneck_dim=128,
    init_std=0.02,  # InternLM's 0.006 is for d >= 1024; at d = 128 every frame would start with one feature
    action_residual=True,  # offsets from the last observed pose, starting at "the body stays where it was"
    pose_normalization=True,  # the action input standardised with the training clips' statistics
    # the state prediction = the teacher's "frame t+1 looks like frame t" + a learned change (zero at the start):
    # a fresh predictor at this scale never reproduces the teacher's own view of frame t (the copy baseline)
    prediction_residual=True,
    # ... where "frame t" is frame t as the camera sees it after the step's rotation (the action's ego-motion): the
    # geometric change a predictor of this size does not learn in the demo's budget (docs/demo_findings.md)
    prediction_reprojection=True,
)
model_type = "EGOAGENT"
model = dict(MODEL, teacher=False, checkpoint=False)
teacher_type = "EGOAGENT"
teacher = dict(MODEL, teacher=True, checkpoint=False)
momentum_scheduler = dict(momentum_teacher=0.98)  # 0.996 would keep half the random init after 300 steps

data = dict(
    micro_num=BATCH_SIZE,
    gradient_accumulation=1,
    total_steps=TOTAL_STEPS,
    frames_per_clip=4,
    dataset_type="EgoExoClips",
    step_between_clips=5,
    global_crops_scale=(0.4, 1.0),
    use_local_crop=True,
    local_crops_scale=(0.05, 0.4),
    local_crops_number=N_LOCAL_CROPS,
    init_crop_size=48,
    vid_crop_size=IMAGE_SIZE,
    local_crop_size=IMAGE_SIZE // 2,
    num_frame_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
    egoexo_frames_folder=f"{DATA_ROOT}/egoexo4d_v2/processed_data",
    egoexo_pose_folder=f"{DATA_ROOT}/egoexo4d_body_pose",
    clip_frames=20,
    pose_frame="clip_first_camera",  # ego-motion shows in the poses (in each frame's own camera it does not)
    camera_motion=True,  # each step's camera motion and the frames' focal length (model.prediction_reprojection)
    # the last 2 training takes are held out of training; after the last step the scale of the learned prediction
    # change (0..1) is the one with the lowest L_pred on their clips (docs/demo_findings.md)
    calibration_takes=2,
    # every take is its own room: without it the action pathway learns the rooms' colours and how the walker moved
    # in each (another clip's images cost 1.5 cm on the training takes, nothing on new ones); one colour change per
    # clip, the same for its frames, for the student only (docs/demo_findings.md)
    clip_color_change=True,
    clip_steps=4,
    pred_img_size=IMAGE_SIZE,
    num_workers=1,  # one decoding process beside the step: no setting measured clearly faster (benchmarks/RESULTS.md)
)

loss = dict(
    name="joint",
    out_dim=OUTPUT_DIM,
    local_crops_number=N_LOCAL_CROPS,
    warmup_teacher_temp=0.04,
    teacher_temp=0.04,
    warmup_teacher_temp_epochs=0,
    rep_weight=1.0,
    pred_weight=1.0,
    act_weight=10.0,  # L_act is an L1 in metres (~0.02), far below the DINO terms (~5)
)

adam = dict(lr=6e-4, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, weight_decay=0.04, weight_decay_end=0.4)
lr_scheduler = dict(total_steps=TOTAL_STEPS, warmup_ratio=0.1, eta_min=6e-6)
hybrid_zero_optimizer = dict(clip_grad_norm=1.0)
parallel = dict(zero1=1)
ckpt = dict(
    save_ckpt_folder=f"save_ckpt/{JOB_NAME}",
    load_ckpt_info=dict(path=f"save_ckpt/{STAGE1_JOB_NAME}", content=("model",), ckpt_type="internlm"),
    checkpoint_every=100,
    auto_resume=True,
    keep_last=2,  # the newest two complete checkpoints (each ~20 MB); the evals read the newest
)
monitor = dict(log_every=25)
