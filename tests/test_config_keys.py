"""Every key of the authors' configs, flipped one at a time, takes effect or stops with an error naming it; only the
loader's documented "accepted, no effect" keys change nothing. And no schema field is stored without being read.

Effects are judged on behaviour, never on the config's own copy of a value:
- what the run builds from the config: the student and teacher (on the meta device: shapes, attention backends,
  recomputed blocks, norms, compute dtypes, loss weights), the schedules, the crops, the FLOP count, the optimizer,
  the loss scaler's trajectory, the parallel plan, the train and validation loaders;
- for the keys that say where the data comes from: the datasets the builders make of the test world from them;
- for the keys the training loop reads (checkpoints, logging, clipping, start-up): a short real run of a tiny
  model that takes those sections from the config, observed from outside: the files it writes, the step a second
  run resumes at, its log lines, the gradient the optimizer steps with, the cuDNN flags it sets, where the evals
  would write.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import logging
import os
import pathlib
import re

import pytest
import torch
from torch.utils.data import Dataset

from internlm.config import ConfigError, schema, to_dict
from internlm.config.loader import ACCEPTED_NO_EFFECT, config_from_namespace, read_config_namespace
from internlm.data.build import build_clip_dataset, build_stage1_frames, build_train_loader, build_valid_loader
from internlm.data.transforms import MultiCropConfig
from internlm.eval.cli import default_output_dir
from internlm.model.flops import sample_cost
from internlm.parallel.data_parallel import DataParallelPlan
from internlm.solver.grad_scaler import DynamicLossScaler
from internlm.solver.optimizer import adamw_kwargs
from internlm.solver.schedules import Schedules
from internlm.train.meta_arch import EgoAgentMetaArch

REPO = pathlib.Path(__file__).resolve().parents[1]
AUTHORS = ("configs/dino_pretrain/lr5e-4_tmp004_300m.py", "configs/joint_train/lr6e-04_tmp004_300m.py")

# A valid other value where the generic flip would only show an error (so that the effect is shown too), or would
# show nothing within the few steps of the test run (a checkpoint every 4000 steps instead of 2000).
OTHER_VALUE = {"dtype": "torch.bfloat16", "attn_backend": {"sdpa": "flex", "flex": "sdpa"}, "checkpoint_every": 1,
               "log_every": 1, "clip_grad_norm": 1e-4}
# Sections the training loop reads while it runs: judged by a short real run (run_observables).
RUN_KEYS = ("ckpt.", "monitor.", "hybrid_zero_optimizer.", "cudnn_deterministic", "cudnn_benchmark", "JOB_NAME")
# Keys that say where the data comes from: judged by the datasets built from them on the test world.
SOURCE_KEYS = ("data.train_folder", "data.valid_folder", "data.step_between_clips", "data.use_egoexo",
               "data.egoexo_frames_folder", "data.egoexo_pose_folder", "data.egoexo_train_split",
               "data.egoexo_valid_split")
# Behaviour shown only on two ranks or inside a training step, each asserted by its own test (named here; the test
# must exist): DDP's buckets; the step's chunks (the update stays that of the whole batch, so nothing else shows).
OWN_TESTS = {
    "hybrid_zero_optimizer.reduce_bucket_size": "test_parallel_sharding.test_ddp_buckets_follow_reduce_bucket_size",
    "data.gradient_accumulation": "test_training.test_gradient_accumulation_splits_the_step_and_keeps_its_update",
}
# Keys that act only together with another: flipped with that one set.
CONTEXT = {"data.valid_micro_num": {"data.valid_every": 100, "data.valid_folder": ["data/WTour/val.mp4"]}}


def leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, dotted + ".")
        else:
            yield dotted, value


def flipped(key: str, value):
    leaf = key.rsplit(".", 1)[-1]
    other = OTHER_VALUE.get(leaf)
    if isinstance(other, dict) and value in other:
        return other[value]
    if isinstance(other, (str, int, float)) and value != other:
        return other
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return {-1: 1, 0: 1, 1: 2}.get(value, value * 2)
    if isinstance(value, float):
        return value * 0.5 if value else 0.5
    if isinstance(value, str):
        return value + "_other"
    if value is None:
        return "data/other"
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], float):
            return type(value)([value[0] * 0.5, *value[1:]])
        return type(value)([*value, "data/other"])
    raise TypeError(f"{key}: no flip for {value!r}")


class Numbered(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def scaler_trajectory(cfg) -> list:
    """10,000 clean steps (growth up to max_scale), then 40 overflows (backoff down to min_scale)."""
    scaler = DynamicLossScaler(cfg.grad_scaler, enabled=True)
    out = []
    for step in range(10_040):
        scaler.update(found_inf=step >= 10_000)
        out.append(scaler.scale)
    return out


def architecture(cfg) -> dict:
    with torch.device("meta"):
        meta = EgoAgentMetaArch(cfg)
    out = {"loss_weights": meta.loss_weights, "dtypes": (meta.student_dtype, meta.teacher_dtype)}
    for name in ("student", "teacher"):
        model = getattr(meta, name)
        out[name] = (
            {n: (tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()},
            model.backbone.kernel.backend, model.backbone.num_checkpointed, model.backbone.norm.eps,
            [block.mixer.num_heads for block in model.backbone.blocks],
            model.backbone.rotary.base if hasattr(model.backbone.rotary, "base") else None,
            model.representation_layout(4), model.joint_layout(2, 4) if model.joint else None,
        )
    return out


def effects(cfg, with_model: bool) -> dict:
    joint = cfg.loss.is_joint
    train = build_train_loader(cfg.data, 0, 1, 0, dataset=Numbered(10_000), joint=joint)
    sampler = train.batch_sampler
    valid = None
    if cfg.data.valid_every:
        v = build_valid_loader(cfg.data, 0, 2, joint, dataset=Numbered(1000))
        valid = (v.batch_sampler.batch_size, len(v.batch_sampler))
    out = {
        "schedules": Schedules.from_config(cfg),
        "crops": MultiCropConfig.from_data_config(cfg.data),
        "flops": sample_cost(cfg.model, cfg.sample_shapes()),
        "adamw": adamw_kwargs(cfg.adam, torch.device("cpu")),
        "scaler": scaler_trajectory(cfg),
        "plan": (DataParallelPlan(cfg.parallel, 8, torch.device("cpu")).mode, cfg.parallel.zero1_config),
        "train_loader": (sampler.micro_num, sampler.stream.seed, sampler.one_epoch, train.num_workers),
        "valid_loader": valid,
    }
    if with_model:
        out["architecture"] = architecture(cfg)
    return out


def source_observables(cfg, world) -> dict:
    """What the data builders make of the test world with this config's sources: the number of training (and, for
    stage 2, validation) samples, or the error that stops the run."""
    def outcome(build):
        try:
            return len(build())
        except (OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"

    if cfg.loss.is_joint:
        return {which: outcome(lambda split=split: build_clip_dataset(cfg.data, split, train=False))
                for which, split in (("train", cfg.data.egoexo_train_split), ("valid", cfg.data.egoexo_valid_split))}
    return {"train": outcome(lambda: build_stage1_frames(cfg.data, "train")),
            "valid": outcome(lambda: build_stage1_frames(cfg.data, "valid")) if cfg.data.valid_folder else None}


def world_sources(world, joint: bool) -> dict:
    """The source keys pointed at the test world (the authors' data/ paths do not exist here)."""
    out = {"data.egoexo_frames_folder": str(world.frames_root), "data.egoexo_pose_folder": str(world.pose_root)}
    if not joint:
        out["data.train_folder"] = [str(p) for p in world.wtour_videos]
    return out


def run_observables(cfg, workdir: pathlib.Path, caplog) -> dict:
    """A 3-step run of a tiny model on generated data that takes the run-time sections (ckpt, monitor,
    hybrid_zero_optimizer, cudnn_*, JOB_NAME) from ``cfg``, in ``workdir``, then a second trainer on the same folder;
    -> what could be seen from outside: files written, the step the second trainer resumes at, log lines, the norm
    of the gradient each optimizer step used, the cuDNN flags, the evals' default output folder."""
    from train_helpers import make_trainer, tiny_config

    from internlm.train.trainer import Trainer

    stage = 2 if cfg.loss.is_joint else 1
    tiny = tiny_config(stage, "unused", steps=3)
    probe = dataclasses.replace(tiny, ckpt=cfg.ckpt, monitor=cfg.monitor, JOB_NAME=cfg.JOB_NAME,
                                hybrid_zero_optimizer=cfg.hybrid_zero_optimizer,
                                cudnn_deterministic=cfg.cudnn_deterministic, cudnn_benchmark=cfg.cudnn_benchmark)
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        init = probe.ckpt.init_source()
        if init is not None and not os.path.exists(init.path):  # stage 2 starts from a stage-1 run of the tiny model
            from internlm.checkpoint import save_weights_only
            from internlm.model import EgoAgent

            one = tiny_config(1, "unused")
            save_weights_only(init.path, EgoAgent(one.model, False), EgoAgent(one.model, False), one, 1)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="internlm.train.trainer"):
            try:
                trainer = make_trainer(probe)
            except (OSError, ValueError, RuntimeError) as exc:
                return {"error": f"{type(exc).__name__}: {exc}"}
            cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
            norms = []

            def record_gradient_norm(optimizer, *_):
                grads = [p.grad.norm() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                norms.append(round(float(torch.linalg.vector_norm(torch.stack(grads))), 6))

            trainer.optimizer.register_step_pre_hook(record_gradient_norm)
            trainer.fit(max_iterations=2)
            trainer.save()  # as a pre-emption would: a checkpoint of step 2 whatever checkpoint_every says
            trainer.fit()  # the last step
            lines = [r.getMessage().split(" |")[0] for r in caplog.records if r.getMessage().startswith("step ")]
        resumed = Trainer(probe, trainer.ctx).progress.step
        files = sorted(re.sub(r"\d{8}-\d{6}|events\.out\.tfevents\..*", "*", str(p.relative_to(workdir)))
                       for p in workdir.rglob("*") if p.is_file())
        return {"files": files, "resumed_at": resumed, "log": lines, "grad_norms": norms, "cudnn": cudnn,
                "eval_output": default_output_dir("3dposes", probe, 3)}
    finally:
        os.chdir(cwd)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


def names(message: str, key: str) -> bool:
    parts = key.split(".")
    # the key itself or its section path ("teacher.lvm_config" for a nested field of a whole-section mismatch)
    return any(".".join(parts[:n]) in message for n in range(len(parts), 1, -1)) or f"'{parts[-1]}'" in message \
        or (len(parts) == 1 and key in message)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the authors' 8 workers, never started here
@pytest.mark.parametrize("path", AUTHORS)
def test_every_key_of_the_authors_configs_takes_effect_or_stops(path, processed_world, tmp_path, caplog):
    namespace = read_config_namespace(path)
    keys = [(k, v) for k, v in leaves({n: v for n, v in namespace.items() if not n.isupper() or n == "JOB_NAME"})]
    assert len(keys) > 150
    world = world_sources(processed_world, config_from_namespace(namespace).loss.is_joint)
    base = config_from_namespace(namespace, list(world.items()))
    base_effects = {False: effects(base, False), True: effects(base, True)}
    probes = iter(range(1000))

    def observed(cfg, key):
        if key.startswith(RUN_KEYS):
            workdir = tmp_path / f"run{next(probes)}"
            workdir.mkdir()
            return run_observables(cfg, workdir, caplog)
        if key in SOURCE_KEYS:
            return source_observables(cfg, processed_world)
        return None

    base_observed = {}
    outcome = {}
    for key, value in keys:
        context = CONTEXT.get(key, {})
        if base.loss.is_joint:
            context = {k: v for k, v in context.items() if k != "data.valid_folder"}
        new = flipped(key, world.get(key, value))
        with_model = key.split(".")[0] in ("model", "teacher", "loss")
        try:
            cfg = config_from_namespace(namespace, list(world.items()) + list(context.items()) + [(key, new)])
        except ConfigError as exc:
            assert names(str(exc), key), f"{key}={new!r}: the error does not name the key: {exc}"
            outcome[key] = "error"
            continue
        if key in ACCEPTED_NO_EFFECT or any(key.startswith(k + ".") for k in ACCEPTED_NO_EFFECT):
            assert to_dict(cfg) == to_dict(base), key
            outcome[key] = "no effect (documented)"
            continue
        if key in OWN_TESTS:  # shown by its own test (2 ranks, the step's chunks)
            module, test = OWN_TESTS[key].split(".")
            assert callable(getattr(importlib.import_module(module), test, None)), OWN_TESTS[key]
            outcome[key] = "effect"
            continue
        reference_cfg = base if not context else config_from_namespace(namespace, list(world.items()) +
                                                                       list(context.items()))
        reference = base_effects[with_model] if not context else effects(reference_cfg, with_model)
        changed = effects(cfg, with_model) != reference
        if not changed and (key.startswith(RUN_KEYS) or key in SOURCE_KEYS):
            kind = "run" if key.startswith(RUN_KEYS) else "sources"
            if (kind, bool(context)) not in base_observed or context:
                base_observed[kind, bool(context)] = observed(reference_cfg, key)
            changed = observed(cfg, key) != base_observed[kind, bool(context)]
        assert changed, f"{key}: {value!r} -> {new!r} changes nothing the run builds or does"
        outcome[key] = "effect"
    counts = {kind: sum(1 for v in outcome.values() if v == kind) for kind in set(outcome.values())}
    assert counts["effect"] > 40 and counts["error"] > 30 and counts["no effect (documented)"] >= 20, counts


def test_schema_fields_are_all_read():
    """A field of the schema that no code outside the config package reads (or its checks) would be a key that
    is accepted and ignored."""
    read = set()
    for file in [*(REPO / "internlm").rglob("*.py"), *REPO.glob("*.py"), *(REPO / "tools").glob("*.py")]:
        if file.parent.name == "config" and file.name in ("schema.py", "loader.py", "typed.py", "__init__.py"):
            if file.name != "schema.py":
                continue
        tree = ast.parse(file.read_text())
        read |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    # validate() reads cfg.<section>.<field>: schema.py counts for the fields it checks
    unread = []
    for cls in vars(schema).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            unread += [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls)
                       if f.name not in read and f.name not in ("constants", "source_file")]
    assert unread == []


def test_accepted_no_effect_keys_are_listed_in_the_config_docs():
    docs = (REPO / "docs" / "configs.md").read_text()
    shown = [re.sub(r"^(model|teacher)\.", "model/teacher.", k) for k in ACCEPTED_NO_EFFECT]
    assert [k for k in shown if f"| `{k}` |" not in docs] == []
