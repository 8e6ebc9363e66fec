"""Every key of the authors' configs, flipped one at a time, takes effect or stops with an error naming it; only the
loader's documented "accepted, no effect" keys change nothing. And no schema field is stored without being read.

Effects are judged on what the run builds from the config: the student and teacher (on the meta device: shapes,
attention backends, recomputed blocks, norms, compute dtypes, loss weights), the schedules, the crops, the FLOP
count, the optimizer, the loss scaler's trajectory, the parallel plan, the train and validation loaders, and the
checkpoint / monitor / start-up settings the trainer reads.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re

import pytest
import torch
from torch.utils.data import Dataset

from internlm.config import ConfigError, schema, to_dict
from internlm.config.loader import ACCEPTED_NO_EFFECT, config_from_namespace, read_config_namespace
from internlm.data.build import build_train_loader, build_valid_loader
from internlm.data.transforms import MultiCropConfig
from internlm.model.flops import sample_cost
from internlm.parallel.data_parallel import DataParallelPlan
from internlm.solver.grad_scaler import DynamicLossScaler
from internlm.solver.optimizer import adamw_kwargs
from internlm.solver.schedules import Schedules
from internlm.train.meta_arch import EgoAgentMetaArch

REPO = pathlib.Path(__file__).resolve().parents[1]
AUTHORS = ("configs/dino_pretrain/lr5e-4_tmp004_300m.py", "configs/joint_train/lr6e-04_tmp004_300m.py")

# A valid other value where the generic flip would only show an error (so that the effect is shown too).
OTHER_VALUE = {"dtype": "torch.bfloat16", "attn_backend": {"sdpa": "flex", "flex": "sdpa"}}
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
    if isinstance(other, str) and value != other:
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
        "flops": sample_cost(cfg),
        "adamw": adamw_kwargs(cfg.adam, torch.device("cpu")),
        "scaler": scaler_trajectory(cfg),
        "plan": (DataParallelPlan(cfg.parallel, 8, torch.device("cpu")).mode, cfg.parallel.zero1_config),
        "train_loader": (sampler.micro_num, sampler.stream.seed, sampler.one_epoch, train.num_workers),
        "valid_loader": valid,
        # read as they are by the data builders (sources), the trainer and the checkpoint manager
        "sources": (cfg.data.folders("train"), cfg.data.folders("valid"), cfg.data.frame_stride(joint),
                    bool(cfg.data.use_egoexo), cfg.data.egoexo_frames_folder, cfg.data.egoexo_pose_folder,
                    cfg.data.egoexo_train_split, cfg.data.egoexo_valid_split, cfg.data.dataset_type,
                    cfg.data.total_steps),
        "loop": (cfg.data.gradient_accumulation, cfg.loss.student_temp, cfg.loss.center_momentum,
                 cfg.loss.freeze_last_layer_steps, cfg.hybrid_zero_optimizer.clip_grad_norm,
                 cfg.hybrid_zero_optimizer.reduce_bucket_size, cfg.parallel.timeout_s),
        "ckpt": to_dict(cfg.ckpt), "monitor": to_dict(cfg.monitor),
        "startup": (cfg.cudnn_deterministic, cfg.cudnn_benchmark, cfg.JOB_NAME),
    }
    if with_model:
        out["architecture"] = architecture(cfg)
    return out


def names(message: str, key: str) -> bool:
    parts = key.split(".")
    # the key itself or its section path ("teacher.lvm_config" for a nested field of a whole-section mismatch)
    return any(".".join(parts[:n]) in message for n in range(len(parts), 1, -1)) or f"'{parts[-1]}'" in message \
        or (len(parts) == 1 and key in message)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the authors' 8 workers, never started here
@pytest.mark.parametrize("path", AUTHORS)
def test_every_key_of_the_authors_configs_takes_effect_or_stops(path):
    namespace = read_config_namespace(path)
    keys = [(k, v) for k, v in leaves({n: v for n, v in namespace.items() if not n.isupper() or n == "JOB_NAME"})]
    assert len(keys) > 150
    base = config_from_namespace(namespace)
    base_effects = {False: effects(base, False), True: effects(base, True)}
    outcome = {}
    for key, value in keys:
        context = CONTEXT.get(key, {})
        if base.loss.is_joint:
            context = {k: v for k, v in context.items() if k != "data.valid_folder"}
        new = flipped(key, value)
        with_model = key.split(".")[0] in ("model", "teacher", "loss")
        try:
            cfg = config_from_namespace(namespace, list(context.items()) + [(key, new)])
        except ConfigError as exc:
            assert names(str(exc), key), f"{key}={new!r}: the error does not name the key: {exc}"
            outcome[key] = "error"
            continue
        if key in ACCEPTED_NO_EFFECT or any(key.startswith(k + ".") for k in ACCEPTED_NO_EFFECT):
            assert to_dict(cfg) == to_dict(base), key
            outcome[key] = "no effect (documented)"
            continue
        reference = base_effects[with_model] if not context else effects(config_from_namespace(
            namespace, list(context.items())), with_model)
        assert effects(cfg, with_model) != reference, f"{key}: {value!r} -> {new!r} changes nothing the run builds"
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


def test_accepted_no_effect_keys_are_listed_in_the_readme():
    readme = (REPO / "README.md").read_text()
    shown = [re.sub(r"^(model|teacher)\.", "model/teacher.", k) for k in ACCEPTED_NO_EFFECT]
    assert [k for k in shown if f"| `{k}` |" not in readme] == []
