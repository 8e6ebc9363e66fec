"""Convert an EgoAgent training checkpoint into a Hugging Face folder.

  python tools/convert2hf_dino_conv_stem_cls.py --src_folder save_ckpt/${model_name} --remove_vq_embed
      -> hf_models/${model_name}/ (config.json with auto_map, model.safetensors, the python files)

--remove_vq_embed is the authors' flag (their InternLM checkpoints could hold VQGAN embedding weights);
--drop_vqgan_weights is the same flag under the name of what it does. EgoAgent checkpoints hold no VQGAN weights, so
on them it is a logged no-op; the authors' command line runs as written.

  model = transformers.AutoModel.from_pretrained("hf_models/${model_name}", trust_remote_code=True)
  feature = model(pixel_values).pooler_output   # (B, d), the state-query output after the final norm

The folder holds the image encoder (conv stem, state query, InternLM backbone, final norm) and the DINO
representation head; the joint-training parts (action projector/head, prediction head, the action and
future-state queries) are left out. It needs torch and transformers (4.40+), never this repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

from internlm.checkpoint import load_model, load_state_dict
from internlm.checkpoint.weights import WEIGHT_FILES
from internlm.initialize.arguments import ScriptArgumentParser
from internlm.model.egoagent import JOINT_ONLY_PREFIXES

logger = logging.getLogger("convert2hf")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the default hf_models/ is here

ENCODER_PREFIXES = ("image_projector.", "state_query", "backbone.")
HEAD_PREFIX = "rep_head."
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODEL_FILE, CONFIG_FILE, WEIGHTS_FILE = "modeling_egoagent.py", "configuration_egoagent.py", "model.safetensors"


def is_vqgan_key(key: str) -> bool:
    """VQGAN embedding weights (InternLM's lvm_config.enable models): any name component mentioning 'vq'."""
    return any("vq" in part.lower() for part in key.split("."))


def run_name(step_folder: str) -> str:
    """save_ckpt/{run}/{step} -> run."""
    return os.path.basename(os.path.dirname(os.path.abspath(step_folder)))


def select_encoder_weights(state: dict, drop_vqgan_weights: bool, keep_head: bool, source: str) -> dict:
    """The weights the HF encoder uses; VQGAN weights dropped on request; anything unknown is an error."""
    vq = [k for k in state if is_vqgan_key(k)]
    if drop_vqgan_weights:
        if vq:
            logger.info("--drop_vqgan_weights (--remove_vq_embed): dropping %d VQGAN embedding tensors (%s ...)",
                        len(vq), vq[0])
        else:
            logger.info("--drop_vqgan_weights (--remove_vq_embed): %s has no VQGAN embedding weights; nothing to "
                        "remove", source)
    elif vq:
        raise SystemExit(f"{source} holds {len(vq)} VQGAN embedding tensors (e.g. {vq[0]}); the exported encoder "
                         f"uses the conv stem only: pass --drop_vqgan_weights (the authors' --remove_vq_embed)")
    out, unknown = {}, []
    for key, value in state.items():
        if key in vq or key.startswith(JOINT_ONLY_PREFIXES):
            continue
        if key.startswith(ENCODER_PREFIXES) or (keep_head and key.startswith(HEAD_PREFIX)):
            out[key] = value
        elif not key.startswith(HEAD_PREFIX):
            unknown.append(key)
    if unknown:
        raise SystemExit(f"{source}: {len(unknown)} weights this converter does not know, e.g. {unknown[:3]}")
    return out


def hf_config(cfg, keep_head: bool, source: str, which: str, dtype: str):
    from internlm.hf.configuration_egoagent import EgoAgentConfig

    m = cfg.model
    config = EgoAgentConfig(
        hidden_size=m.hidden_size, num_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        mlp_ratio=m.mlp_ratio, layer_norm_epsilon=m.layer_norm_epsilon, rope_base=m.rope_base,
        image_size=m.img_size, patch_size=m.patch_size, causal=m.causal, perframe_atten=m.perframe_atten,
        with_rep_head=keep_head, output_dim=m.output_dim, head_hidden_dim=m.head_hidden_dim,
        head_bottleneck_dim=m.head_bottleneck_dim, norm_last_layer=m.norm_last_layer, attn_backend="sdpa",
        source_checkpoint=os.path.abspath(source), source_weights="teacher" if which == "teacher" else "model",
    )
    config.architectures = ["EgoAgentModel"]
    config.auto_map = {"AutoConfig": "configuration_egoagent.EgoAgentConfig",
                       "AutoModel": "modeling_egoagent.EgoAgentModel"}
    return config


def write_config_json(config, path: str, dtype: str) -> None:
    """config.json readable by transformers 4.x ('torch_dtype') and 5.x ('dtype')."""
    data = config.to_dict()
    data.update(torch_dtype=dtype, dtype=dtype)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def copy_code(tgt: str) -> list[str]:
    import internlm.hf as hf_package

    here = os.path.dirname(hf_package.__file__)
    files = [os.path.join(here, MODEL_FILE), os.path.join(here, CONFIG_FILE)]
    files += [m.__file__ for m in hf_package.BACKBONE_MODULES]
    for f in files:
        shutil.copyfile(f, os.path.join(tgt, os.path.basename(f)))
    return [os.path.basename(f) for f in files]


@torch.no_grad()
def verify(tgt: str, src_folder: str, which: str, dtype: str) -> float:
    """Load the folder as a user would (AutoModel, remote code) and compare with EgoAgent.encode."""
    import transformers

    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # renamed in 5.0
    hf = transformers.AutoModel.from_pretrained(tgt, trust_remote_code=True, **{dtype_kw: torch.float32}).eval()
    ref, _, _ = load_model(src_folder, which)
    size = hf.config.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    diff = float((hf(pixel_values=images).pooler_output - ref.encode(images)).abs().max())
    logger.info("check: max |HF pooler_output - EgoAgent.encode| = %.3g on 2 random %dpx images", diff, size)
    if dtype == "float32" and diff > 1e-5:
        raise SystemExit(f"the exported model differs from the training model by {diff:.3g} (> 1e-5) in fp32")
    return diff


def convert(src_folder: str, tgt_folder: str | None, which: str = "teacher", drop_vqgan_weights: bool = False,
            dtype: str = "float32", keep_head: bool = True, check: bool = True) -> str:
    from internlm.hf.modeling_egoagent import EgoAgentModel

    state, cfg, step_folder = load_state_dict(src_folder, which)
    source = os.path.join(step_folder, WEIGHT_FILES[which])
    logger.info("read %s weights of %s (%d tensors)", which, step_folder, len(state))
    weights = select_encoder_weights(state, drop_vqgan_weights, keep_head, source)
    config = hf_config(cfg, keep_head, step_folder, which, dtype)
    model = EgoAgentModel(config)
    model.load_state_dict(weights, strict=True)  # names and shapes must match the HF model exactly
    tgt = tgt_folder or os.path.join(REPO_ROOT, "hf_models", run_name(step_folder))
    os.makedirs(tgt, exist_ok=True)
    tensors = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
    weights_path = os.path.join(tgt, WEIGHTS_FILE)
    save_file(tensors, weights_path, metadata={"format": "pt"})  # "format" is required by transformers 4.x
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights_path, 0o666 & ~umask)  # safetensors creates the file owner-only; share it like the rest
    write_config_json(config, os.path.join(tgt, "config.json"), dtype)
    code = copy_code(tgt)
    n_params = sum(v.numel() for v in tensors.values())
    logger.info("wrote %s: %s (%.1fM parameters, %s), config.json, %s", tgt, WEIGHTS_FILE, n_params / 1e6, dtype,
                ", ".join(code))
    if check:
        verify(tgt, step_folder, which, dtype)
    return tgt


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptArgumentParser(description=__doc__)
    p.add_argument("--src_folder", required=True,
                   help="a checkpoint step folder, or a run folder (-> its newest complete step)")
    p.add_argument("--tgt_folder", default=None, help="output folder (default: hf_models/{run name} in the repo)")
    p.add_argument("--drop_vqgan_weights", "--remove_vq_embed", dest="drop_vqgan_weights", action="store_true",
                   help="drop VQGAN embedding weights if the checkpoint has any (a logged no-op otherwise); "
                        "--remove_vq_embed is the authors' name for it")
    p.add_argument("--ckpt", choices=("teacher", "model"), default="teacher",
                   help="which weights: the EMA teacher (default, as DINO evaluates) or the student ('model')")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    p.add_argument("--no_rep_head", action="store_true", help="leave out the DINO representation head")
    p.add_argument("--no_verify", action="store_true",
                   help="skip loading the result with AutoModel and comparing it with the training model")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = parse_args(argv)
    convert(args.src_folder, args.tgt_folder, args.ckpt, args.drop_vqgan_weights, args.dtype,
            keep_head=not args.no_rep_head, check=not args.no_verify)
    return 0


if __name__ == "__main__":
    sys.exit(main())
