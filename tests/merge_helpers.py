"""Checkpoint builders and fp64 comparisons shared by the merge tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OUT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def save_ckpt(folder, tensors: dict, shards=None, config=True) -> Path:
    """A checkpoint folder: one model.safetensors, or shards (lists of names) with an index."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if shards is None:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        assert sorted(sum(shards, [])) == sorted(tensors)
        wm = {}
        for i, names in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: tensors[n] for n in names}, str(folder / fname), metadata={"format": "pt"})
            wm.update({n: fname for n in names})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "torch_dtype": "float32"}))
        (folder / "tokenizer.json").write_text("{}")
    return folder


def load_ckpt(folder) -> dict:
    folder = Path(folder)
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def model_tensors(seed: int, dtypes=None, vocab=97, hidden=24, layers=2, value_head=True, big=0) -> dict:
    """A small decoder-shaped state dict: tied embeddings (no lm_head), a value head,
    a 0-dim scalar, an empty tensor, an int buffer, and optionally one `big` tensor."""
    g = torch.Generator().manual_seed(seed)
    d = dtypes or {}

    def r(*shape, name):
        return (torch.randn(shape, generator=g) * 0.5).to(d.get(name, torch.float32))

    t = {"model.embed_tokens.weight": r(vocab, hidden, name="embed")}
    for i in range(layers):
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = r(hidden, hidden, name="q")
        t[f"model.layers.{i}.mlp.up_proj.weight"] = r(2 * hidden, hidden, name="up")
        t[f"model.layers.{i}.input_layernorm.weight"] = r(hidden, name="norm")
    t["model.norm.weight"] = r(hidden, name="norm")
    t["logit_scale"] = r(name="scalar")  # 0-dim
    t["model.empty"] = torch.zeros(0, hidden, dtype=d.get("empty", torch.float32))
    t["model.position_ids"] = torch.arange(7, dtype=torch.int64)
    if value_head:
        t["v_head.weight"] = r(vocab, hidden, name="v_head")
        t["v_head.bias"] = r(vocab, name="v_head")
    if big:
        t["model.big"] = r(big, name="big")
    return t


def ordered(x: torch.Tensor) -> torch.Tensor:
    """Half-precision bit patterns as integers ordered like the values (for ulp distances)."""
    v = x.contiguous().view(torch.int16).to(torch.int64)
    return torch.where(v < 0, -(v & 0x7FFF), v)


def assert_matches_fp64(got: torch.Tensor, want64: np.ndarray, scale64: np.ndarray, name: str) -> None:
    """fp32: within about one fp32 ulp of the fp64 result (the engine keeps its fp32
    sums compensated, so cancellation costs no accuracy). bf16/fp16: the fp64
    result rounded to that dtype, at most 1 ulp off, every element."""
    want = torch.from_numpy(np.asarray(want64, dtype=np.float64)).reshape(got.shape)
    scale = torch.from_numpy(np.asarray(scale64, dtype=np.float64)).reshape(got.shape)
    if got.dtype == torch.float32:
        # One rounding of the result, plus the pair's own error (~2^-44 of sum |c_i x_i|).
        tol = 2.0 ** -23 * want.abs() + 2.0 ** -40 * scale + 1e-38
        err = (got.double() - want).abs()
        assert bool((err <= tol).all()), f"{name}: max error {err.max().item():.3g} above one fp32 ulp"
        return
    if not got.numel():
        return
    rounded = want.to(torch.float32).to(got.dtype) if got.dtype == torch.float16 else want.to(got.dtype)
    ulps = (ordered(got) - ordered(rounded)).abs()
    assert ulps.max().item() <= 1, f"{name}: {ulps.max().item()} ulp off the rounded fp64 result"


def np64(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float64).numpy()


def listdir_clean(parent) -> list[str]:
    return sorted(os.listdir(parent))


def llama_config(layers: int, hidden: int = 32, inter: int = 64, vocab: int = 61) -> dict:
    """config.json of a tiny Llama (mergekit reads its architecture and layer count from it)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": vocab, "rms_norm_eps": 1e-5, "max_position_embeddings": 64,
            "tie_word_embeddings": False}


def llama_shapes(cfg: dict) -> dict:
    """Tensor name -> shape of a Llama checkpoint with config ``cfg``."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    return shapes


def save_llama(folder, seed: int, layers: int, dtype=torch.float32, related_to: dict = None, **dims) -> dict:
    """A tiny Llama checkpoint folder (one safetensors file and config.json); returns its tensors.
    With ``related_to`` (another such state dict) the weights are that one plus a small change,
    as fine-tunes of one base are, so that sign elections and SLERP angles are not degenerate."""
    cfg = llama_config(layers, **dims)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for n, shape in llama_shapes(cfg).items():
        x = torch.randn(shape, generator=g) * 0.02
        if related_to is not None:
            x = related_to[n].to(torch.float32) + 0.5 * x
        sd[n] = x.to(dtype)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({**cfg, "torch_dtype": str(dtype).split(".")[-1]}))
    return sd
