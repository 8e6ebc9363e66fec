"""The config system: the paper configs load with the paper's numbers; mistakes are errors that name the key."""

import textwrap

import pytest

from internlm.config import ConfigError, load_config
from internlm.model.modeling_internlm import swiglu_hidden_size

PAPER = {
    "configs/dino_pretrain/lr5e-4_tmp004_300m.py": dict(stage=1, d=1024, heads=8, lr=5e-4, batch=64),
    "configs/dino_pretrain/lr5e-4_tmp004_1b.py": dict(stage=1, d=2048, heads=16, lr=5e-4, batch=32),
    "configs/joint_train/lr6e-04_tmp004_300m.py": dict(stage=2, d=1024, heads=8, lr=6e-4, batch=60),
    "configs/joint_train/lr6e-04_tmp004_1b.py": dict(stage=2, d=2048, heads=16, lr=6e-4, batch=40),
}


@pytest.mark.parametrize("path", sorted(PAPER))
def test_paper_configs_have_the_paper_numbers(path):
    want = PAPER[path]
    cfg = load_config(path)
    assert cfg.stage == want["stage"]
    m = cfg.model
    assert (m.hidden_size, m.num_attention_heads, m.num_layers, m.head_dim) == (want["d"], want["heads"], 22, 128)
    assert swiglu_hidden_size(m.hidden_size, m.mlp_ratio) == {1024: 2816, 2048: 5632}[want["d"]]
    assert (m.layer_norm_epsilon, m.norm_type, m.dtype) == (1e-6, "rmsnorm", "torch.float16")
    assert (m.img_size, m.patch_size, m.output_dim) == (224, 16, 65536)
    assert cfg.teacher is not None and cfg.teacher.teacher and not cfg.model.teacher
    assert cfg.adam.lr == want["lr"] and (cfg.adam.adam_beta1, cfg.adam.adam_beta2) == (0.9, 0.999)
    assert (cfg.adam.weight_decay, cfg.adam.weight_decay_end) == (0.04, 0.4)
    assert cfg.momentum_scheduler.momentum_teacher == 0.996
    assert cfg.hybrid_zero_optimizer.clip_grad_norm == 1.0
    assert cfg.loss.teacher_temp == 0.04 and cfg.loss.local_crops_number == 6
    assert cfg.data.micro_num == want["batch"] and cfg.data.gradient_accumulation == 4
    assert (cfg.data.vid_crop_size, cfg.data.local_crop_size, cfg.data.init_crop_size) == (224, 112, 300)
    assert cfg.data.global_crops_scale == (0.4, 1.0) and cfg.data.local_crops_scale == (0.05, 0.4)
    assert not cfg.ckpt.save_ckpt_folder.startswith("local:")  # InternLM's prefix is removed
    if want["stage"] == 2:  # paper Table 9
        assert cfg.data.total_steps == 72000 and cfg.lr_scheduler.resolved_warmup_steps() == 1800
        assert cfg.data.micro_num * cfg.constants["N_GPUS"] == 1920
        assert (cfg.data.clip_frames, cfg.data.clip_steps) == (20, 4)
        assert cfg.ckpt.init_source().path.startswith("save_ckpt/dino_")


def write_config(tmp_path, body: str, base="configs/demo/stage1_dino_tiny.py"):
    """The demo config with ``body`` appended (so one key can be broken at a time)."""
    text = open(base).read() + "\n" + textwrap.dedent(body)
    path = tmp_path / "cfg.py"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("body, must_contain", [
    ("data['warmup_ratoi'] = 0.1", ["'warmup_ratoi'", "section 'data'"]),
    ("lr_scheduler['warmpu_ratio'] = 0.1", ["'warmpu_ratio'", "section 'lr_scheduler'", "did you mean 'warmup_ratio'"]),
    ("model['lvm_config']['conv_stem_config']['patch'] = 8",
     ["'patch'", "section 'model.lvm_config.conv_stem_config'"]),
    ("lr_schedular = dict(total_steps=10)", ["'lr_schedular'", "did you mean 'lr_scheduler'"]),
    ("data['micro_num'] = '32'", ["data.micro_num", "expected an integer"]),
    ("model['lvm_config']['enable'] = True", ["model.lvm_config.enable=True", "VQGAN"]),
    ("teacher['frames2batch'] = True", ["teacher.frames2batch=True"]),
    ("model['use_tracking'] = True", ["model.use_tracking=True", "tracking"]),
    ("parallel = dict(zero1=1, tensor=2)", ["parallel.tensor=2", "tensor parallelism"]),
    ("parallel = dict(zero1=1, pipeline=dict(size=2))", ["parallel.pipeline.size=2", "pipeline"]),
    ("loss['out_dim'] = 77", ["loss.out_dim=77", "model.output_dim"]),
    ("teacher['hidden_size'] = 64", ["teacher.hidden_size=64", "model.hidden_size"]),
    ("model['attn_backend'] = 'xformers'", ["model.attn_backend='xformers'"]),
    ("data['dataset_type'] = 'EgoExoClips'", ["loss.name='dinoimgcls'", "data.dataset_type"]),
    ("ckpt['save_ckpt_folder'] = 'boto3:bucket/x'", ["ckpt.save_ckpt_folder", "only local paths"]),
])
def test_config_mistakes_name_the_key(tmp_path, body, must_contain):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, body))
    for text in must_contain:
        assert text in str(err.value), str(err.value)


def test_constants_local_prefix_and_overrides(tmp_path):
    path = write_config(tmp_path, """
        MY_CONSTANT = 3
        ckpt['save_ckpt_folder'] = 'local:save_ckpt/x'
    """)
    cfg = load_config(path, [("data.total_steps", 7), ("lr_scheduler.total_steps", 7)])
    assert cfg.constants["MY_CONSTANT"] == 3 and cfg.JOB_NAME == "demo_stage1"
    assert cfg.ckpt.save_ckpt_folder == "save_ckpt/x"
    assert cfg.data.total_steps == 7


@pytest.mark.parametrize("path", sorted(PAPER))
def test_total_steps_override_moves_the_schedule_and_warmup(path):
    shipped = load_config(path)
    if shipped.lr_scheduler.warmup_steps is None:  # stage 1: the schedule follows, warm-up ratio and all
        cfg = load_config(path, [("data.total_steps", 100)])
        assert (cfg.data.total_steps, cfg.lr_scheduler.total_steps) == (100, 100)
        assert cfg.lr_scheduler.resolved_warmup_steps() == 10
    else:  # stage 2 also gives 1,800 warm-up steps (2.5%): they keep the ratio, with a notice
        notices = []
        cfg = load_config(path, [("data.total_steps", 100)], notices)
        assert (cfg.lr_scheduler.total_steps, cfg.lr_scheduler.resolved_warmup_steps()) == (100, 2)
        assert "lr_scheduler.warmup_steps follows lr_scheduler.warmup_ratio / lr_scheduler.total_steps: 1800 -> 2, " \
               "after --opt data.total_steps" in notices
        cfg = load_config(path, [("data.total_steps", 100), ("lr_scheduler.warmup_steps", 5)])  # set explicitly
        assert (cfg.lr_scheduler.total_steps, cfg.lr_scheduler.resolved_warmup_steps()) == (100, 5)
        with pytest.raises(ConfigError) as err:  # an explicit contradiction still stops, naming both
            load_config(path, [("data.total_steps", 100), ("lr_scheduler.warmup_steps", 5),
                               ("lr_scheduler.warmup_ratio", 0.5)])
        assert "warmup_ratio=0.5" in str(err.value) and "--opt lr_scheduler.warmup_steps=5" in str(err.value)
    with pytest.raises(ConfigError) as err:  # the schedule alone cannot move: the run length is data.total_steps
        load_config(path, [("lr_scheduler.total_steps", 100)])
    assert str(err.value).endswith("add --opt data.total_steps=100 [--opt lr_scheduler.total_steps=100]")


def test_errors_name_the_override_not_the_file(tmp_path):
    base = "configs/demo/stage1_dino_tiny.py"
    for overrides, want in (
            ([("data.micro_num", "many")],
             "data.micro_num: expected an integer, got 'many' [--opt data.micro_num='many']"),
            ([("lr_scheduler.warmpu_ratio", 0.1)], "[--opt lr_scheduler.warmpu_ratio=0.1]"),
            ([("loss.nframes", 4)], "loss.nframes=4 but a stage-1 sample gives 1 frames [--opt loss.nframes=4]"),
            ([("optimiser.lr", 1.0)], "unknown top-level name 'optimiser' [--opt optimiser.lr=1.0]")):
        with pytest.raises(ConfigError) as err:
            load_config(base, overrides)
        assert want in str(err.value) and base not in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match=r"cfg.py\]$"):  # the file's own mistake names the file
        load_config(write_config(tmp_path, "data['micro_bsz'] = 2", base=base), [("data.total_steps", 5)])


def test_override_of_a_shared_dict_changes_one_section(tmp_path):
    # teacher = dict(MODEL, ...) and model = dict(MODEL, ...) share MODEL's lvm_config
    cfg = load_config("configs/dino_pretrain/lr5e-4_tmp004_300m.py",
                      [("teacher.lvm_config.conv_stem_config.patch_size", 16)])
    assert cfg.model.lvm_config is not cfg.teacher.lvm_config
    with pytest.raises(ConfigError, match="teacher.lvm_config=.* differs from model.lvm_config"):
        load_config("configs/dino_pretrain/lr5e-4_tmp004_300m.py",
                    [("teacher.lvm_config.enable_conv_stem", True),
                     ("teacher.lvm_config.conv_stem_config.img_size", 112)])


def test_malformed_opt_is_a_one_line_error(capsys):
    import train

    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", "configs/demo/stage1_dino_tiny.py", "--opt", "data.total_steps"])
    message = str(exit_.value.code)
    assert message.startswith("config error: --opt 'data.total_steps': expected KEY=VALUE") and "\n" not in message


@pytest.mark.parametrize("key, value, expected", [
    ("data.micro_num", 0, "data.micro_num=0: expected an integer >= 1"),
    ("data.total_steps", 0, "data.total_steps=0: expected an integer >= 1"),
    ("adam.lr", -1, "adam.lr=-1.0: expected a finite number >= 0"),
    ("adam.lr", float("nan"), "adam.lr=nan: expected a finite number >= 0"),
    ("hybrid_zero_optimizer.max_consecutive_skipped_steps", -1, "max_consecutive_skipped_steps=-1"),
    ("monitor.log_every", 0, "monitor.log_every=0: expected an integer >= 1"),
])
def test_out_of_range_values_are_errors_at_load_time(key, value, expected):
    with pytest.raises(ConfigError) as err:
        load_config("configs/demo/stage2_joint_tiny.py", [(key, value)])
    assert expected in str(err.value)


def test_residual_prediction_excludes_a_copied_prediction_head():
    with pytest.raises(ConfigError, match="prediction_residual"):
        load_config("configs/demo/stage2_joint_tiny.py", [("model.prediction_init", "representation")])
    cfg = load_config("configs/joint_train/lr6e-04_tmp004_300m.py")
    assert not cfg.model.prediction_residual and cfg.model.prediction_init == "fresh"  # the paper's predictor


@pytest.mark.parametrize("config, ok", [("configs/demo/stage2_joint_tiny.py", True),
                                        ("configs/demo/stage1_dino_tiny.py", False)])
def test_clip_color_change_needs_the_clips_of_stage_2(config, ok):
    overrides = {"data.clip_color_change": True}
    if ok:
        assert load_config(config, overrides).data.clip_color_change
    else:
        with pytest.raises(ConfigError, match="data.clip_color_change=True .* needs a stage-2 config"):
            load_config(config, overrides)
