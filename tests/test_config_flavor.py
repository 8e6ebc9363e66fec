"""One key per model size (model.flavor) and what follows a command-line override (config/follow.py): the teacher,
the restated copies, the schedule, the teacher's save folder, the attention backend on a CPU; each with a notice,
and an explicit contradiction still an error."""

from __future__ import annotations

import textwrap

import pytest
import torch

from internlm.config import ConfigError, load_config
from internlm.config.schema import MODEL_FLAVORS
from internlm.model.param_count import count_parameters
from internlm.train.device_config import follow_device

PAPER = ("configs/dino_pretrain/lr5e-4_tmp004_300m.py", "configs/dino_pretrain/lr5e-4_tmp004_1b.py",
         "configs/joint_train/lr6e-04_tmp004_300m.py", "configs/joint_train/lr6e-04_tmp004_1b.py")
SIZES = ("hidden_size", "num_layers", "num_attention_heads")


def sizes(model) -> tuple:
    return tuple(getattr(model, k) for k in SIZES)


@pytest.mark.parametrize("path", PAPER)
def test_flavor_on_the_command_line_replaces_the_files_sizes_and_the_teacher_follows(path):
    notices = []
    cfg = load_config(path, [("model.flavor", "tiny")], notices)
    tiny = tuple(MODEL_FLAVORS["tiny"][k] for k in SIZES)
    assert sizes(cfg.model) == sizes(cfg.teacher) == tiny and cfg.teacher.flavor == "tiny"
    assert cfg.teacher.teacher and cfg.model.checkpoint_fraction == 1.0 and not cfg.teacher.checkpoint  # the rest stays
    file = load_config(path)
    assert notices[0] == (f"model.flavor='tiny' replaces the file's model.hidden_size={file.model.hidden_size}, "
                          f"model.num_layers=22, model.num_attention_heads={file.model.num_attention_heads} "
                          "with 64, 2, 2")
    assert notices[1].startswith("teacher follows model: flavor None -> 'tiny', hidden_size ")


@pytest.mark.parametrize("path, flavor, want", [(PAPER[1], "300M", 284e6), (PAPER[2], "1B", 1.13e9)])
def test_the_paper_flavors_count_the_paper_sizes(path, flavor, want):
    """The 1B file at flavor 300M is EgoAgent-300M and the 300M file at flavor 1B is EgoAgent-1B (the files
    themselves, unchanged, count 284M / 1.13B: test_model.py)."""
    cfg = load_config(path, [("model.flavor", flavor)])
    assert abs(count_parameters(cfg.model, cfg.loss.is_joint).model - want) / want < 0.01


def _write(tmp_path, body: str) -> str:
    path = tmp_path / "cfg.py"
    path.write_text(textwrap.dedent("""
        MODEL = dict(dtype="torch.float32", attn_backend="sdpa", output_dim=128, head_hidden_dim=64,
                     head_bottleneck_dim=16, lvm_config=dict(conv_stem_config=dict(img_size=32, patch_size=8)))
        data = dict(vid_crop_size=32, local_crop_size=16, pred_img_size=32, init_crop_size=48, micro_num=8,
                    gradient_accumulation=2, total_steps=10, dataset_type="Generated")
        loss = dict(out_dim=128, grad_accum=2, batch_size=4)
        lr_scheduler = dict(total_steps=10)
        ckpt = dict(save_ckpt_folder="runs/a", save_teacher_ckpt_folder="runs/a_teacher")
    """) + textwrap.dedent(body))
    return str(path)


def test_flavor_in_a_file_agrees_with_its_sizes_or_stops(tmp_path):
    ok = load_config(_write(tmp_path, 'model = dict(MODEL, flavor="tiny")\nteacher = dict(MODEL, teacher=True)\n'))
    assert sizes(ok.model) == (64, 2, 2) and sizes(ok.teacher) == (64, 2, 2)  # the teacher follows the file's too
    path = _write(tmp_path, 'model = dict(MODEL, flavor="tiny", hidden_size=128)\n')
    with pytest.raises(ConfigError, match=r"model.hidden_size=128 contradicts model.flavor='tiny', which gives "
                                          r"hidden_size=64; set one of them \[.*cfg.py\]"):
        load_config(path)
    assert sizes(load_config(path, [("model.flavor", "tiny")]).model) == (64, 2, 2)  # the command line replaces it
    with pytest.raises(ConfigError, match="contradicts model.flavor='tiny'.*--opt model.hidden_size=32"):
        load_config(path, [("model.flavor", "tiny"), ("model.hidden_size", 32)])
    with pytest.raises(ConfigError, match=r"model.flavor='huge': expected one of tiny, 300M, 1B \[--opt model.flavor"):
        load_config(path, [("model.flavor", "huge")])


def test_teacher_follows_unless_set_and_a_contradiction_stops(tmp_path):
    path = _write(tmp_path, "model = dict(MODEL)\nteacher = dict(MODEL, teacher=True)\n")
    cfg = load_config(path, [("model.num_layers", 3), ("model.dtype", "torch.bfloat16")])
    assert (cfg.teacher.num_layers, cfg.teacher.dtype) == (3, "torch.bfloat16")
    cfg = load_config(path, [("model.dtype", "torch.bfloat16"), ("teacher.dtype", "torch.float32")])  # set: stays
    assert (cfg.model.dtype, cfg.teacher.dtype) == ("torch.bfloat16", "torch.float32")
    with pytest.raises(ConfigError, match=r"teacher.num_layers=4 differs from model.num_layers=3.*\[--opt "
                                          r"model.num_layers=3, --opt teacher.num_layers=4\]"):
        load_config(path, [("model.num_layers", 3), ("teacher.num_layers", 4)])


def test_copies_follow_their_source(tmp_path):
    path = _write(tmp_path, "model = dict(MODEL)\nteacher = dict(MODEL, teacher=True)\n")
    notices = []
    cfg = load_config(path, [("data.micro_num", 18), ("data.gradient_accumulation", 3), ("model.output_dim", 64),
                             ("ckpt.save_ckpt_folder", "elsewhere/run"), ("data.total_steps", 5)], notices)
    assert (cfg.loss.batch_size, cfg.loss.grad_accum, cfg.loss.out_dim, cfg.teacher.output_dim) == (6, 3, 64, 64)
    assert cfg.ckpt.save_teacher_ckpt_folder == "elsewhere/run_teacher" and cfg.lr_scheduler.total_steps == 5
    assert "loss.batch_size follows data.micro_num / data.gradient_accumulation: 4 -> 6" in notices
    assert "loss.grad_accum follows data.gradient_accumulation: 2 -> 3" in notices
    assert "ckpt.save_teacher_ckpt_folder follows ckpt.save_ckpt_folder: 'runs/a_teacher' -> " \
           "'elsewhere/run_teacher'" in notices
    assert len(notices) == 6  # the teacher, out_dim, grad_accum, batch_size, total_steps, the folder
    with pytest.raises(ConfigError, match=r"loss.batch_size=4 but data.micro_num=12 / gradient_accumulation=2 gives "
                                          r"6 samples \[--opt data.micro_num=12, --opt loss.batch_size=4\]"):
        load_config(path, [("data.micro_num", 12), ("loss.batch_size", 4)])  # set explicitly: no following


@pytest.mark.parametrize("path", PAPER)
def test_each_paper_config_goes_tiny_with_one_override(path):
    """The laptop command of docs/reproduction.md: flavor and run length (plus data paths); what must follow
    follows, with a notice each; on a CPU the attention backend follows too."""
    notices = []
    data = ([("data.train_folder", ["w/WTour"])] if "dino" in path else []) + [
        ("data.egoexo_frames_folder", "w/frames"), ("data.egoexo_pose_folder", "w/poses")]
    cfg = load_config(path, [("model.flavor", "tiny"), ("data.total_steps", 3)] + data, notices)
    assert sizes(cfg.model) == sizes(cfg.teacher) == (64, 2, 2)
    assert cfg.lr_scheduler.total_steps == 3 and cfg.lr_scheduler.resolved_warmup_steps() == 0
    assert "lr_scheduler.total_steps follows data.total_steps" in "\n".join(notices)
    if cfg.stage == 2:
        assert "lr_scheduler.warmup_steps follows" in "\n".join(notices)
        cfg = follow_device(cfg, torch.device("cpu"), {}, notices)
        assert (cfg.model.resolved_attn_backend, cfg.teacher.resolved_attn_backend) == ("sdpa", "flex")
        assert notices[-1].startswith("model.attn_backend follows the device: 'flex' -> 'sdpa' on this CPU (")
        explicit = load_config(path, [("model.flavor", "tiny"), ("model.attn_backend", "flex")])
        assert follow_device(explicit, torch.device("cpu"), {"model.attn_backend": "flex"}, []).model.attn_backend \
            == "flex"  # chosen on the command line: left to fail loudly with its reason
