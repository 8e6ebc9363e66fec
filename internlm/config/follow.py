"""What follows a command-line override (``--opt KEY=VALUE``) in a config file, and ``model.flavor``.

The authors' files state some values twice: the teacher section repeats the student's sizes, ``loss.batch_size``
restates ``data.micro_num / data.gradient_accumulation``, ``lr_scheduler.total_steps`` restates
``data.total_steps``, the teacher's save folder is the run's with ``_teacher`` appended, and so on (``RULES``). An
``--opt`` of a source moves each such copy with it when

  - the file gave the copy as that function of its sources (or left both at their defaults),
  - the command line does not set the copy itself (an explicit contradiction stops with the validator's error),

and every key that moves is reported in a one-line notice. ``model.flavor`` (schema.MODEL_FLAVORS) sets width,
depth and heads: in a file, sizes given beside it must agree with it; on the command line it replaces the file's
sizes (and the teacher follows, as after any ``--opt model.KEY``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from .schema import MODEL_FLAVORS, ModelConfig, TrainConfig
from .typed import ConfigError, to_dict

MISSING = object()  # a key a tree does not hold / a rule that does not apply
_PATCH = "model.lvm_config.conv_stem_config.patch_size"


def get(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def put(tree: dict, key: str, value: Any) -> None:
    """Set a dotted key, copying each dict on the way (files share dicts between sections: teacher = dict(MODEL))."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{'.'.join(parts[:i + 1])}' is not a section")
        node[part] = child = dict(child)
        node = child
    node[parts[-1]] = value


def _defaults() -> dict:
    tree = to_dict(TrainConfig())
    tree["teacher"] = to_dict(ModelConfig(teacher=True))
    return tree


_DEFAULTS = _defaults()


@dataclass
class View:
    """The effective value of a key: the namespace's, else the schema's default."""

    tree: dict

    def __call__(self, key: str) -> Any:
        value = get(self.tree, key)
        return get(_DEFAULTS, key) if value is MISSING else value


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


# ------------------------------------------------------------------------------------------------ rules
Fn = Callable[[View, View], Any]  # (new values, the file's values) -> the copy's new value, or MISSING


def _same(source: str, copy_key: str) -> Fn:
    def fn(new: View, file: View) -> Any:
        return new(source) if file(copy_key) == file(source) else MISSING
    return fn


def _given(copy_key: str, formula: Callable[[View], Any]) -> Fn:
    """An optional restatement (None = not given): follows only when the file gave it, and gave it right."""
    def fn(new: View, file: View) -> Any:
        if file(copy_key) is None:
            return MISSING
        try:
            return formula(new) if file(copy_key) == formula(file) else MISSING
        except (TypeError, ZeroDivisionError):
            return MISSING
    return fn


def _tokens(crop: str) -> Callable[[View], Any]:
    return lambda v: (v(crop) // v(_PATCH)) ** 2


def _warmup_steps(new: View, file: View) -> Any:
    """warmup_steps and warmup_ratio both in the file, agreeing: the steps keep the ratio of a new total."""
    steps, ratio, total = (file(f"lr_scheduler.{k}") for k in ("warmup_steps", "warmup_ratio", "total_steps"))
    if steps is None or not ratio or round(total * ratio) != steps:
        return MISSING
    return int(round(new("lr_scheduler.total_steps") * new("lr_scheduler.warmup_ratio")))


def _warmup_ratio(new: View, file: View) -> Any:
    """... and the ratio follows new warm-up steps."""
    steps, ratio, total = (file(f"lr_scheduler.{k}") for k in ("warmup_steps", "warmup_ratio", "total_steps"))
    if steps is None or not ratio or round(total * ratio) != steps or not new("lr_scheduler.total_steps"):
        return MISSING
    return new("lr_scheduler.warmup_steps") / new("lr_scheduler.total_steps")


def _suffixed_folder(new: View, file: View) -> Any:
    """The teacher's save folder named after the run's (the authors': save_ckpt/{JOB}_teacher) keeps its suffix."""
    folder, teacher = file("ckpt.save_ckpt_folder"), file("ckpt.save_teacher_ckpt_folder")
    if not (isinstance(folder, str) and isinstance(teacher, str) and folder and teacher.startswith(folder)):
        return MISSING
    return None if new("ckpt.save_ckpt_folder") is None else new("ckpt.save_ckpt_folder") + teacher[len(folder):]


def _step_replaced_by_fps(new: View, file: View) -> Any:
    """A stage-1 file's WalkingTours step gives way to a sampling rate given on the command line."""
    if new("data.sample_fps") is None or new("loss.name") == "joint" or file("data.step_between_clips") is None:
        return MISSING
    return None


@dataclass(frozen=True)
class Rule:
    copy: str
    sources: tuple[str, ...]
    fn: Fn


STUDENT_ONLY = {"checkpoint"}  # model keys the teacher does not follow: activation checkpointing (no backward)

# applied in this order (a copy may be another rule's source); the teacher follows the student between
# MODEL_RULES and RULES
MODEL_RULES = (
    Rule("model.lvm_config.conv_stem_config.img_size", ("data.vid_crop_size",),
         _same("data.vid_crop_size", "model.lvm_config.conv_stem_config.img_size")),
    Rule("model.use_multi_crop", ("data.use_local_crop",), _same("data.use_local_crop", "model.use_multi_crop")),
)
RULES = (
    Rule("loss.use_multicrop", ("data.use_local_crop",), _same("data.use_local_crop", "loss.use_multicrop")),
    Rule("loss.out_dim", ("model.output_dim",), _same("model.output_dim", "loss.out_dim")),
    Rule("loss.local_crops_number", ("data.local_crops_number",),
         _same("data.local_crops_number", "loss.local_crops_number")),
    Rule("loss.grad_accum", ("data.gradient_accumulation",), _same("data.gradient_accumulation", "loss.grad_accum")),
    Rule("loss.batch_size", ("data.micro_num", "data.gradient_accumulation"),
         _given("loss.batch_size", lambda v: v("data.micro_num") // v("data.gradient_accumulation"))),
    Rule("data.num_frame_tokens", ("data.vid_crop_size", _PATCH),
         _given("data.num_frame_tokens", _tokens("data.vid_crop_size"))),
    Rule("loss.global_token_len", ("data.vid_crop_size", _PATCH),
         _given("loss.global_token_len", _tokens("data.vid_crop_size"))),
    Rule("loss.local_token_len", ("data.local_crop_size", _PATCH),
         _given("loss.local_token_len", _tokens("data.local_crop_size"))),
    Rule("kd_config.type", ("loss.name",), _given("kd_config.type", lambda v: v("loss.name"))),
    Rule("kd_config.temperature", ("momentum_scheduler.momentum_teacher",),
         _given("kd_config.temperature", lambda v: v("momentum_scheduler.momentum_teacher"))),
    Rule("lr_scheduler.total_steps", ("data.total_steps",), _same("data.total_steps", "lr_scheduler.total_steps")),
    Rule("lr_scheduler.warmup_ratio", ("lr_scheduler.warmup_steps",), _warmup_ratio),
    Rule("lr_scheduler.warmup_steps", ("lr_scheduler.warmup_ratio", "lr_scheduler.total_steps"), _warmup_steps),
    Rule("ckpt.save_teacher_ckpt_folder", ("ckpt.save_ckpt_folder",), _suffixed_folder),
    Rule("data.step_between_clips", ("data.sample_fps",), _step_replaced_by_fps),
)


# ------------------------------------------------------------------------------------------------ following
def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) or value is None else f"{value:g}" if isinstance(value, float) \
        else str(value)


@dataclass
class Follower:
    """Applies overrides and what follows them to a copy of a file's namespace."""

    file: dict  # the file's namespace, untouched
    overridden: dict[str, Any]  # --opt key -> value
    tree: dict = dataclasses.field(init=False)
    followed: dict[str, str] = dataclasses.field(default_factory=dict)  # moved key -> the --opt it follows
    notices: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.tree = copy.deepcopy(self.file)

    def _set_by_user(self, key: str) -> bool:
        """Whether the command line sets ``key`` (or a section holding it)."""
        return any(key == k or key.startswith(k + ".") for k in self.overridden)

    def _origin(self, keys) -> str:
        new, file = View(self.tree), View(self.file)
        moved = [k for k in keys if new(k) != file(k)]
        origins = [self.followed.get(k, k) for k in moved]
        return next((o for o in origins if o in self.overridden), origins[0] if origins else keys[0])

    def _apply(self, rule: Rule) -> None:
        new, file = View(self.tree), View(self.file)
        if self._set_by_user(rule.copy) or all(new(s) == file(s) for s in rule.sources):
            return
        value = rule.fn(new, file)
        if value is MISSING or value == new(rule.copy):
            return
        old = new(rule.copy)
        put(self.tree, rule.copy, value)
        self.followed[rule.copy] = origin = self._origin(rule.sources)
        via = "" if origin in rule.sources else f", after --opt {origin}"
        self.notices.append(f"{rule.copy} follows {' / '.join(rule.sources)}: {_fmt(old)} -> {_fmt(value)}{via}")

    def _resolve_flavor(self, section: str) -> None:
        node = self.tree.get(section)
        flavor = node.get("flavor") if isinstance(node, dict) else None
        if flavor is None:
            return
        if flavor not in MODEL_FLAVORS:
            raise ConfigError(f"{section}.flavor={flavor!r}: expected one of {', '.join(MODEL_FLAVORS)}")
        from_command_line = self._set_by_user(f"{section}.flavor")
        file_node = self.file.get(section) if isinstance(self.file.get(section), dict) else {}
        replaced = []
        for key, value in MODEL_FLAVORS[flavor].items():
            full = f"{section}.{key}"
            if self._set_by_user(full) or (not from_command_line and key in file_node):
                if node.get(key, value) != value:  # given beside the flavor: must agree (the validator says so)
                    continue
            elif node.get(key, MISSING) != value:
                replaced.append((key, node.get(key, get(_DEFAULTS, full)), value))
                put(self.tree, full, value)
                node = self.tree[section]
                self.followed[full] = self.followed.get(f"{section}.flavor", f"{section}.flavor")
        if replaced and from_command_line:
            self.notices.append(f"{section}.flavor={flavor!r} replaces the file's " + ", ".join(
                f"{section}.{k}={_fmt(old)}" for k, old, _ in replaced) + " with " + ", ".join(
                f"{_fmt(new)}" for _, _, new in replaced))

    def _teacher_follows_student(self) -> None:
        """Every student key that moved moves the teacher's, where the file had them alike (teacher = dict(MODEL)),
        except how the student's backward is run (``STUDENT_ONLY``: the teacher has none)."""
        if not isinstance(self.file.get("teacher"), dict):
            return  # no teacher section: the teacher is built from the student's
        new, file = View(self.tree), View(self.file)
        keys = set(_leaves(self.tree.get("model", {}))) | set(_leaves(self.file.get("model", {})))
        moved = []
        for key in sorted(keys - STUDENT_ONLY):
            student, teacher = f"model.{key}", f"teacher.{key}"
            if new(student) == file(student) or self._set_by_user(teacher) or file(teacher) != file(student):
                continue
            if new(teacher) != new(student):
                moved.append((key, new(teacher), new(student)))
                put(self.tree, teacher, new(student))
                self.followed[teacher] = self.followed.get(student, student)
        if moved:
            self.notices.append("teacher follows model: " + ", ".join(
                f"{k} {_fmt(old)} -> {_fmt(value)}" for k, old, value in moved))

    def run(self) -> dict:
        for key, value in self.overridden.items():
            put(self.tree, key, value)
        self._resolve_flavor("model")
        for rule in MODEL_RULES:
            self._apply(rule)
        self._teacher_follows_student()
        self._resolve_flavor("teacher")
        for rule in RULES:
            self._apply(rule)
        return self.tree
