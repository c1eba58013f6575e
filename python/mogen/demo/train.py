"""Build (once) and cache the demo's tiny models.

What gets built, deterministically from :class:`DemoConfig`:

- ``base/``: a small Llama trained on the balanced corpus with a GPT-2 style
  byte-level BPE tokenizer;
- ``reference/``: a weaker Llama trained on the same corpus with a
  sentencepiece style metaspace BPE tokenizer (a different vocabulary; the
  guides' tokenizer family, :data:`mogen.demo.vocabs.GUIDE_FAMILIES`, is a
  config field);
- ``expert_nature/`` and ``expert_city/``: the reference fine-tuned the way
  Bone Soup trains backbones, on a reward mixture (``expert_beta`` of one
  topic, the rest the other), so MAGE-I-M merges them with ``B_e^-1 mu``;
- ``policy_nature/``, ``policy_city/``: the base fine-tuned on one topic each
  (Rewarded Soup and MOD mix them); ``backbone_nature/``, ``backbone_city/``:
  the base fine-tuned on Bone Soup's reward mixture (``bone_beta`` of one topic,
  the rest the other; MAGE Stage 1 merges them);
- ``value_nature/`` and ``value_city/``: explicit value models (mogen's
  value-model format) trained from the reference with
  :func:`mogen.value.train_value_model` on responses the reference samples
  to neutral prompts, scored by each objective's reward function; a sampled
  response that ended with eos is trained through its eos (MAGE eq. 16).

The three-objective variant (``DemoConfig(objectives=3)``) trains on the
three-topic corpus (:data:`mogen.demo.corpus.TOPICS_3`) and builds the same
families with a third member each (``expert_ocean/``, ``policy_ocean/``,
``backbone_ocean/``, ``value_ocean/``); a backbone's mixture is ``bone_beta``
of its own topic and the rest split evenly over the other two, the matrix
``B`` that Bone Soup inverts.

The cross-family variant (``DemoConfig(guide_family="cross")``) gives every
guide (reference, experts, value models) a tokenizer as far from the base's as
a real cross-family pair: a metaspace BPE with no byte fallback (unknown
characters are ``<unk>``, as in T5's sentencepiece) and a vocabulary of
:data:`mogen.demo.vocabs.CROSS_GUIDE_VOCAB` tokens, under a third of the
base's; :mod:`mogen.demo.vocabs` says how much of the base's vocabulary the
guides then cover.

Each folder is a ``transformers`` model folder (``config.json``,
``model.safetensors``) with its tokenizer files, so ``mogen decode`` and
``from_pretrained`` load them directly. Everything goes to
``$MOGEN_CACHE/demo/<key>`` (default: ``.mogen-cache/`` at the repository
root, else ``~/.cache/mogen``), where ``key`` hashes the config: a changed
config builds anew, an unchanged one loads in a second. The folder is built
under a temporary name and renamed when complete, so a killed build leaves
nothing half-written behind.

Determinism: fixed seeds for the corpus, initialisation and batch order, and a
fixed thread count while training (CPU reductions depend on it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..decoding.loading import load_causal_lm, load_tokenizer
from ..decoding.loading import quiet_transformers as _quiet_transformers
from ..numerics import GRAD_CLIP_NORM
from ..value import train_value_model
from . import corpus as demo_corpus
from .vocabs import CROSS_GUIDE_VOCAB, GUIDE_FAMILIES, _tokenizers, _training_lines

__all__ = ["DemoConfig", "DemoModels", "cache_root", "build_demo_models", "load_demo_models", "demo_dir"]

# 4: experts trained on reward mixtures (expert_beta); value models trained through the final eos.
DEMO_VERSION = 4


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and schedules of the demo models (the cache key hashes all of it; ``objectives`` only when not 2,
    ``guide_family`` only when not ``"metaspace"``)."""

    corpus_size: int = 4000
    topic_size: int = 1500
    seed: int = 0
    base_vocab: int = 640
    guide_vocab: int = 400
    base_hidden: int = 96
    base_layers: int = 3
    guide_hidden: int = 48
    guide_layers: int = 2
    heads: int = 4
    max_positions: int = 128
    batch: int = 32
    base_steps: int = 600
    reference_steps: int = 400
    expert_steps: int = 150
    policy_steps: int = 100
    bone_beta: float = 0.8
    expert_beta: float = 0.8
    lr: float = 3e-3
    expert_lr: float = 1e-3
    value_prompts: int = 96
    value_samples: int = 4
    value_tokens: int = 20
    value_epochs: int = 6
    value_lr: float = 2e-3
    threads: int = 2
    objectives: int = 2  # 2 (nature, city) or 3 (+ ocean): see mogen.demo.corpus.objectives
    guide_family: str = "metaspace"  # the guides' tokenizer: one of GUIDE_FAMILIES

    def __post_init__(self) -> None:
        demo_corpus.objectives(self.objectives)  # raises unless 2 or 3
        if self.guide_family not in GUIDE_FAMILIES:
            raise ValueError(f"guide_family must be one of {GUIDE_FAMILIES}, got {self.guide_family!r}")

    @property
    def topics(self) -> tuple[str, ...]:
        """The corpus topics, one per objective, in weight order."""
        return tuple(name for name, _ in demo_corpus.objectives(self.objectives))

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        # The fields came after the two-objective demo: leaving their defaults out of the hash keeps
        # that demo's key (and every cache built before the fields existed) unchanged.
        if fields["objectives"] == 2:
            del fields["objectives"]
        if fields["guide_family"] == "metaspace":
            del fields["guide_family"]
        else:  # the family's vocabulary size is a constant, not a field: a changed one builds anew
            fields["cross_guide_vocab"] = CROSS_GUIDE_VOCAB
        blob = json.dumps({"version": DEMO_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class DemoModels:
    """The loaded demo: models in eval mode and their tokenizers."""

    base: Any
    base_tokenizer: Any
    reference: Any
    experts: dict  # objective name -> expert model
    guide_tokenizer: Any
    path: Path
    values: dict = dataclasses.field(default_factory=dict)  # objective name -> value model


def cache_root() -> Path:
    """``$MOGEN_CACHE``, else ``.mogen-cache`` in the source checkout, else ``~/.cache/mogen``."""
    env = os.environ.get("MOGEN_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    if (repo / "setup.py").is_file() and (repo / "python" / "mogen").is_dir():
        return repo / ".mogen-cache"
    return Path.home() / ".cache" / "mogen"


def demo_dir(config: DemoConfig = DemoConfig(), root: Optional[Path] = None) -> Path:
    return Path(root or cache_root()) / "demo" / config.key()


def _llama(vocab: int, hidden: int, layers: int, cfg: DemoConfig, tok: Any) -> Any:
    # inside: transformers takes seconds to import; only a build of the demo models needs it.
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, max_position_embeddings=cfg.max_positions,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def _encode(tok: Any, lines: Sequence[str], max_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``<s> line </s>`` per row, right-padded to the longest (at most ``max_width``); labels -100 on padding."""
    rows = []
    for line in lines:
        ids = [tok.bos_token_id] + tok(line, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(ids[:max_width])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(r)
    return ids, labels


def _train(model: Any, data: tuple[torch.Tensor, torch.Tensor], steps: int, lr: float, batch: int, seed: int,
           log: Callable[[str], None], name: str) -> None:
    ids, labels = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    model.train()
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        idx = torch.randint(0, ids.shape[0], (batch,), generator=gen)
        # Right padding needs no mask: causal attention never lets a real token see
        # the pads after it, and pads carry no loss.
        loss = model(input_ids=ids[idx], labels=labels[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        opt.step()
        sched.step()
    model.eval()
    log(f"  {name}: {steps} steps, final loss {loss.item():.3f} ({time.perf_counter() - t0:.1f}s)")


def build_demo_models(config: DemoConfig = DemoConfig(), root: Optional[Path] = None, *, rebuild: bool = False,
                      log: Callable[[str], None] = print) -> Path:
    """Build the demo models into the cache unless they are there; return their folder."""
    target = demo_dir(config, root)
    if (target / "meta.json").is_file() and not rebuild:
        return target
    _quiet_transformers()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(config.threads, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    try:
        log(f"mogen demo: building the {config.objectives}-objective demo models into {target} "
            "(once; a minute or two on 2 CPU cores)")
        lines, topics = _training_lines(config)
        base_tok, guide_tok = _tokenizers(config, lines + [s for v in topics.values() for s in v])

        folders = _train_base_family(config, base_tok, lines, topics, log)
        folders.update(_train_guides(config, guide_tok, lines, topics, log))
        for name, (model, tok) in folders.items():
            model.save_pretrained(tmp / name)
            tok.save_pretrained(tmp / name)
        value_stats = _train_value_models(config, folders["reference"][0], guide_tok, tmp, log)
        meta = {"version": DEMO_VERSION, "config": dataclasses.asdict(config),
                "objectives": list(config.topics), "value_models": value_stats,
                "build_seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        log(f"mogen demo: built in {time.perf_counter() - t0:.0f}s")
        return target
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)


def _finetune(model: Any, state: dict, data: tuple, steps: int, cfg: DemoConfig, seed: int,
              log: Callable[[str], None], name: str) -> Any:
    model.load_state_dict(state)
    _train(model, data, steps, cfg.expert_lr, cfg.batch, seed, log, name)
    return model


def _mixture(topics: dict, own: str, share: float, n: int, seed: int) -> list[str]:
    """``n`` topic sentences, a ``share`` of them about ``own`` and the rest split evenly over the other
    topics (Bone Soup's ``B``: ``beta`` on the diagonal, ``(1 - beta) / (n - 1)`` elsewhere)."""
    others = [name for name in topics if name != own]
    rng = random.Random(f"mix:{own}:{seed}")
    k = int(round(share * n))
    out = rng.sample(topics[own], min(k, len(topics[own])))
    for i, name in enumerate(others):
        # Remainder to the first topics. With one other topic this is the one draw the two-objective
        # demo always made, so its backbones are unchanged.
        count = (n - k) // len(others) + (i < (n - k) % len(others))
        out += rng.sample(topics[name], min(count, len(topics[name])))
    return out


def _train_base_family(cfg: DemoConfig, tok: Any, lines: list, topics: dict, log: Callable[[str], None]) -> dict:
    """The base (the SFT model), and from it one policy per objective (Rewarded Soup, MOD) and one
    backbone per objective trained on Bone Soup's reward mixture (``bone_beta`` of its own topic)."""
    width = cfg.max_positions
    torch.manual_seed(cfg.seed)
    base = _llama(len(tok), cfg.base_hidden, cfg.base_layers, cfg, tok)
    _train(base, _encode(tok, lines, width), cfg.base_steps, cfg.lr, cfg.batch, cfg.seed, log, "base (byte-level BPE)")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    out = {"base": (base, tok)}
    for k, name in enumerate(cfg.topics):
        for kind, share in (("policy", 1.0), ("backbone", cfg.bone_beta)):
            data = _encode(tok, _mixture(topics, name, share, cfg.topic_size, cfg.seed), width)
            model = _llama(len(tok), cfg.base_hidden, cfg.base_layers, cfg, tok)
            out[f"{kind}_{name}"] = (_finetune(model, state, data, cfg.policy_steps, cfg, cfg.seed + 30 + k, log,
                                               f"{kind}_{name}"), tok)
    return out


def _train_guides(cfg: DemoConfig, tok: Any, lines: list, topics: dict, log: Callable[[str], None]) -> dict:
    """The reference (weaker, its own tokenizer) and one expert per objective fine-tuned from it on Bone
    Soup's reward mixture (``expert_beta`` of its own topic)."""
    width = cfg.max_positions
    torch.manual_seed(cfg.seed + 1)
    reference = _llama(len(tok), cfg.guide_hidden, cfg.guide_layers, cfg, tok)
    _train(reference, _encode(tok, lines, width), cfg.reference_steps, cfg.lr, cfg.batch, cfg.seed + 1, log,
           f"reference (metaspace BPE{', no byte fallback' if cfg.guide_family == 'cross' else ''}, {len(tok)} tokens)")
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    out = {"reference": (reference, tok)}
    for k, name in enumerate(cfg.topics):
        expert = _llama(len(tok), cfg.guide_hidden, cfg.guide_layers, cfg, tok)
        data = _encode(tok, _mixture(topics, name, cfg.expert_beta, cfg.topic_size, cfg.seed + 10), width)
        out[f"expert_{name}"] = (_finetune(expert, state, data, cfg.expert_steps, cfg, cfg.seed + 10 + k, log,
                                           f"expert_{name}"), tok)
    return out


def _train_value_models(cfg: DemoConfig, reference: Any, tok: Any, folder: Path,
                        log: Callable[[str], None]) -> dict:
    """One value model per objective from the reference; returns their training figures."""
    prompts = demo_corpus.neutral_prompts(cfg.value_prompts, seed=cfg.seed)
    stats = {}
    for k, (name, fn) in enumerate(demo_corpus.objectives(cfg.objectives)):
        torch.manual_seed(cfg.seed + 20 + k)
        res = train_value_model(
            reference, tok, prompts=prompts, reward=lambda prompt, response, fn=fn: fn(response),
            objectives=[name], samples_per_prompt=cfg.value_samples, max_new_tokens=cfg.value_tokens, top_p=0.95,
            epochs=cfg.value_epochs, lr=cfg.value_lr, heldout=0.2, seed=cfg.seed + 20 + k, progress=False,
            save_to=folder / f"value_{name}",
        )
        stats[name] = {"heldout_spearman": round(res.heldout_spearman, 3), "seconds": round(res.seconds, 1),
                       "train_examples": res.train_examples, "heldout_examples": res.heldout_examples,
                       "final_loss": round(res.losses[-1], 4), "head_rows": res.head_rows,
                       "untrained_rows": res.untrained_rows}
        log(f"  value_{name}: {res.train_examples} sampled responses, {cfg.value_epochs} epochs, final loss "
            f"{res.losses[-1]:.3f}, held-out Spearman {res.heldout_spearman:.3f}, {res.untrained_rows} of "
            f"{res.head_rows} head rows never a target ({res.seconds:.1f}s)")
    return stats


def load_demo_models(config: DemoConfig = DemoConfig(), root: Optional[Path] = None, *, rebuild: bool = False,
                     log: Callable[[str], None] = print) -> DemoModels:
    """The demo models, built first if the cache lacks them."""
    _quiet_transformers()
    path = build_demo_models(config, root, rebuild=rebuild, log=log)

    def model(name: str) -> Any:
        return load_causal_lm(path / name, device=None, what="demo model")

    base_tok = load_tokenizer(path / "base", "demo base")
    guide_tok = load_tokenizer(path / "reference", "demo reference")
    experts = {name: model(f"expert_{name}") for name in config.topics}
    values = {name: model(f"value_{name}") for name in config.topics}
    return DemoModels(model("base"), base_tok, model("reference"), experts, guide_tok, path, values)
