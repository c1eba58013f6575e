"""The architecture matrix: every common ``transformers`` architecture x every mogen feature, each cell measured.

``tests/test_architectures.py`` runs one check per cell and asserts it passes, or that mogen refuses it with
the reason :data:`EXPECTED_REFUSALS` names; with ``--architectures-results`` the same run writes
``benchmarks/results/architectures.md`` (:func:`results_body`), which the README shows. Models are tiny random
configs of each architecture (hidden 32, 2 layers, GQA where the architecture has it, sliding windows of
:data:`WINDOW` tokens so that windows slide within the prompts), built in-process; tokenizers come from
``mogen.tiny``.

Features (:data:`FEATURES`) and what "pass" means:

- ``zero``: all-zero weights give ``base.generate``'s tokens exactly (greedy, left-padded batch);
- ``foreign_guide``: a guide pair of another architecture with another tokenizer steers this base; the
  tokens equal an uncached step-by-step reference and differ from the unguided ones;
- ``as_foreign_guide``: a guide pair of this architecture with its own tokenizer steers a base of another
  architecture: ``generate`` equals the reference, and chunk search's beam scores equal an uncached float64
  re-scoring (the guide's cache reordered with its rows);
- ``value`` / ``value_topk``: a value model of this architecture (head replaced by a value head, saved in
  mogen's value-model format) loads with ``ValueGuide.from_pretrained`` unchanged, and guides with the full
  head / with ``top_k`` (kernel K2) exactly as the reference;
- ``merge`` / ``merge_into``: three saved checkpoints merged by ``mogen.merge`` and loaded with
  ``from_pretrained``, and merged by ``mogen.merge_into`` into a live model, equal the torch average of their
  state dicts, tied embeddings and the architecture's own tensor names included;
- ``search``: chunk search with zero weights, one beam, one expansion and ``top_k=1`` equals greedy
  ``base.generate``; with W = kappa = 2 every final beam's score equals the float64 re-scoring.
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

import mogen
from mogen.decoding.kvcache import new_cache
from search_reference import reference_beam
from tiny_models import (
    byte_level_tokenizer,
    left_pad,
    metaspace_tokenizer,
    reference_greedy_cross,
    reference_greedy_guided,
)

EOS, PAD, BOS = 2, 3, 1  # the ids of mogen.tiny's tokenizers
WINDOW = 5  # sliding windows shorter than the prompts
STEPS = 6  # new tokens per check
PROMPTS = ["The cat sees", "A naïve café in 日本", "One"]


# --------------------------------------------------------------------------- #
# Tiny models of each architecture
# --------------------------------------------------------------------------- #


def _decoder(cls_name: str, config_name: str, **extra) -> Callable[[int], torch.nn.Module]:
    def build(vocab: int) -> torch.nn.Module:
        import transformers

        cfg = getattr(transformers, config_name)(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, eos_token_id=EOS, pad_token_id=PAD,
            bos_token_id=BOS, **extra)
        return getattr(transformers, cls_name)(cfg)
    return build


def _gpt2(vocab: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                      eos_token_id=EOS, bos_token_id=BOS, pad_token_id=PAD))


def _gpt_neox(vocab: int) -> torch.nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, eos_token_id=EOS, bos_token_id=BOS, pad_token_id=PAD,
        tie_word_embeddings=False))


def _mamba(vocab: int) -> torch.nn.Module:
    from transformers import MambaConfig, MambaForCausalLM

    return MambaForCausalLM(MambaConfig(vocab_size=vocab, hidden_size=32, state_size=4, num_hidden_layers=2,
                                        eos_token_id=EOS, bos_token_id=BOS, pad_token_id=PAD))


def _rwkv(vocab: int) -> torch.nn.Module:
    from transformers import RwkvConfig, RwkvForCausalLM

    return RwkvForCausalLM(RwkvConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                      attention_hidden_size=32, intermediate_size=64, context_length=256,
                                      eos_token_id=EOS, bos_token_id=BOS, pad_token_id=PAD))


def _t5(vocab: int) -> torch.nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                               num_heads=4, eos_token_id=EOS, pad_token_id=PAD,
                                               decoder_start_token_id=PAD))


@dataclass(frozen=True)
class Arch:
    """An architecture of the matrix: its label and a builder of a random tiny model for a vocabulary size."""

    label: str
    build: Callable[[int], torch.nn.Module]
    sharpen: float = 8.0  # logits scale (random init gives nearly flat logits; Mamba's are peaked already)


ARCHITECTURES: dict[str, Arch] = {
    "llama": Arch("Llama", _decoder("LlamaForCausalLM", "LlamaConfig", tie_word_embeddings=False)),
    "mistral": Arch("Mistral", _decoder("MistralForCausalLM", "MistralConfig", sliding_window=WINDOW)),
    "qwen2": Arch("Qwen2 (tied)", _decoder("Qwen2ForCausalLM", "Qwen2Config", tie_word_embeddings=True)),
    "gemma2": Arch("Gemma 2", _decoder("Gemma2ForCausalLM", "Gemma2Config", head_dim=8, sliding_window=WINDOW)),
    "gemma3": Arch("Gemma 3 (text)", _decoder("Gemma3ForCausalLM", "Gemma3TextConfig", head_dim=8,
                                              sliding_window=WINDOW,
                                              layer_types=["sliding_attention", "full_attention"])),
    "qwen3": Arch("Qwen3", _decoder("Qwen3ForCausalLM", "Qwen3Config", head_dim=8, tie_word_embeddings=False)),
    "mixtral": Arch("Mixtral (MoE)", _decoder("MixtralForCausalLM", "MixtralConfig", num_local_experts=2,
                                              num_experts_per_tok=1, sliding_window=None)),
    "phi3": Arch("Phi-3", _decoder("Phi3ForCausalLM", "Phi3Config")),
    "gpt2": Arch("GPT-2", _gpt2),
    "gpt_neox": Arch("GPT-NeoX", _gpt_neox),
    "mamba": Arch("Mamba", _mamba, sharpen=1.0),
    "rwkv": Arch("RWKV", _rwkv),
    "t5": Arch("T5 (encoder-decoder)", _t5),
}


def _sharpen(model: torch.nn.Module, factor: float) -> None:
    """Scale the logits by ``factor`` so greedy choices are clear-cut (random init gives nearly flat logits).

    Through the head when it is the model's own, else through the final norm (a tied head shares the input
    embedding, which must stay as it is).
    """
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if factor == 1.0:
        return
    with torch.no_grad():
        if head is not None and emb is not None and head.weight is not emb.weight:
            head.weight.mul_(factor)
            return
        inner = model.base_model
        norm = next((getattr(inner, n) for n in ("norm", "ln_f", "final_layer_norm", "norm_f", "ln_out")
                     if isinstance(getattr(inner, n, None), torch.nn.Module)), None)
        if norm is None:
            return
        if "Gemma" in type(norm).__name__:  # Gemma's RMSNorm scales by (1 + weight)
            norm.weight.copy_(factor * (1 + norm.weight) - 1)
        else:
            norm.weight.mul_(factor)


def build(arch: str, vocab: int, seed: int) -> torch.nn.Module:
    """A random tiny ``arch`` model in eval mode (fp32, CPU), its logits sharpened, eos / pad set."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[arch].build(vocab).eval()
    _sharpen(model, ARCHITECTURES[arch].sharpen)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    return model


@functools.lru_cache(maxsize=None)
def model(arch: str, tokenizer: str, seed: int) -> torch.nn.Module:
    """A shared model (never changed by a check) for ``tokenizer`` "bl" (byte-level) or "ms" (metaspace)."""
    return build(arch, len(_tokenizer(tokenizer)), seed)


def _tokenizer(name: str):
    return byte_level_tokenizer() if name == "bl" else metaspace_tokenizer()


def partner(arch: str) -> str:
    """The other architecture a cross-architecture check pairs ``arch`` with."""
    return "llama" if arch == "gpt_neox" else "gpt_neox"


def describe(arch: str) -> tuple[str, str, str]:
    """(model class, its cache layers as mogen builds them, whether the head is tied to the input embedding)."""
    import inspect

    m = model(arch, "bl", 0)
    emb, head = m.get_input_embeddings(), m.get_output_embeddings()
    tied = "yes" if head is not None and emb is not None and head.weight is emb.weight else "no"
    if getattr(m.config, "is_encoder_decoder", False):
        return type(m).__name__, "encoder-decoder", tied
    if not {"cache", "past_key_values"} & set(inspect.signature(m.forward).parameters):
        return type(m).__name__, "none (own state)", tied
    layers = getattr(new_cache(m), "layers", None) or []
    kinds = []
    for layer in layers:
        name = type(layer).__name__
        kind = ("full" if name == "GrowingLayer" else "sliding" if "Sliding" in name
                else "recurrent" if "Linear" in name else name)
        kinds.append(kind)
    return type(m).__name__, " + ".join(dict.fromkeys(kinds)) or "full", tied


# --------------------------------------------------------------------------- #
# The checks
# --------------------------------------------------------------------------- #


def _prompts():
    bl = byte_level_tokenizer()
    ids, mask = left_pad(bl, PROMPTS)
    rows = [bl(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    return bl, ids, mask, rows


def _new(out: torch.Tensor, ids: torch.Tensor) -> list[list[int]]:
    return out[:, ids.shape[1]:].tolist()


def _pair(arch: str, tokenizer: str, seed: int) -> mogen.ProxyGuide:
    tok = None if tokenizer == "bl" else metaspace_tokenizer()
    return mogen.ProxyGuide(model(arch, tokenizer, seed), model(arch, tokenizer, seed + 1), tokenizer=tok)


def check_zero(arch: str) -> None:
    bl, ids, mask, _ = _prompts()
    base = model(arch, "bl", 0)
    got = mogen.generate(base, ids, mask, guides=[_pair(arch, "bl", 1)], tokenizer=bl, weights=[0.0],
                         max_new_tokens=STEPS)
    want = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=STEPS)
    assert torch.equal(got, want), (got.tolist(), want.tolist())


def _cross(base_arch: str, guide_arch: str) -> None:
    """``base_arch`` base (byte-level), ``guide_arch`` guide pair with the metaspace tokenizer: vs the reference."""
    bl, ids, mask, rows = _prompts()
    base = model(base_arch, "bl", 0)
    guide = _pair(guide_arch, "ms", 11)
    got = mogen.generate(base, ids, mask, guides=[guide], tokenizer=bl, weights=[1.5], max_new_tokens=STEPS)
    want = reference_greedy_cross(base, bl, [guide], rows, [1.5], STEPS)
    assert _new(got, ids) == [r[-STEPS:] for r in want], (_new(got, ids), want)
    plain = mogen.generate(base, ids, mask, guides=[], tokenizer=bl, max_new_tokens=STEPS)
    assert not torch.equal(got, plain), "the guide changed nothing"


def check_foreign_guide(arch: str) -> None:
    _cross(arch, partner(arch))


def _check_beams(out, base, guides, rows, weights, bl) -> int:
    checked = 0
    for b, beams in enumerate(out.beams):
        for beam in beams:
            score, base_lp, terms = reference_beam(base, guides, rows[b], beam.tokens, weights, base_tokenizer=bl)
            assert abs(beam.base_logprob - base_lp) < 1e-4, (b, beam.tokens)
            assert all(abs(x - y) < 1e-4 for x, y in zip(beam.terms, terms)), (b, beam.tokens, beam.terms, terms)
            assert abs(beam.score - score) < 1e-4, (b, beam.tokens)
            checked += 1
    return checked


def check_as_foreign_guide(arch: str) -> None:
    other = partner(arch)
    _cross(other, arch)
    bl, ids, mask, rows = _prompts()
    base, guide = model(other, "bl", 0), _pair(arch, "ms", 11)
    out = mogen.search(base, ids, mask, guides=[guide], tokenizer=bl, weights=[1.0], beam_width=2, expansion=2,
                       chunk_length=3, max_new_tokens=STEPS, temperature=2.0,
                       generator=torch.Generator().manual_seed(0), return_scores=True)
    assert _check_beams(out, base, [guide], rows, [1.0], bl) >= len(rows)


@functools.lru_cache(maxsize=None)
def _value_folder(arch: str) -> Path:
    """A value model of ``arch`` (a random head: values of spread ~1.7) saved in mogen's format, with its tokenizer."""
    from mogen.value_format import make_value_model

    torch.manual_seed(7)
    value = ARCHITECTURES[arch].build(len(byte_level_tokenizer())).eval()
    value = make_value_model(value, objectives=["reward"], reset_head=False)
    with torch.no_grad():  # a head of its own: a tied head would copy the embedding, as the base's logits do
        value.get_output_embeddings().weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(7))
    mogen.ValueGuide(value)  # mogen's own checks of the model, before anything is saved
    folder = Path(_tmp()) / f"{arch}-value"
    value.save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    _VALUE_MODELS[arch] = value
    return folder


_VALUE_MODELS: dict[str, torch.nn.Module] = {}


def _loaded_value(arch: str, top_k: Optional[int]) -> mogen.ValueGuide:
    from mogen.value_format import is_value_model

    folder = _value_folder(arch)
    guide = mogen.ValueGuide.from_pretrained(folder, tokenizer=None, top_k=top_k)
    saved, loaded = _VALUE_MODELS[arch].state_dict(), guide.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert is_value_model(guide.model)
    emb, head = guide.model.get_input_embeddings(), guide.model.get_output_embeddings()
    assert head.weight is not emb.weight, "the value head is tied to the input embedding after loading"
    return guide


def _value(arch: str, top_k: Optional[int]) -> None:
    bl, ids, mask, rows = _prompts()
    base = model(arch, "bl", 0)
    guide = _loaded_value(arch, top_k)
    got = mogen.generate(base, ids, mask, guides=[guide], tokenizer=bl, weights=[1.0], max_new_tokens=STEPS)
    want = reference_greedy_guided(base, [guide], rows, [1.0], STEPS, base_tokenizer=bl)
    assert _new(got, ids) == [r[-STEPS:] for r in want], (_new(got, ids), want)
    plain = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=STEPS)
    assert not torch.equal(got, plain), "the value guide changed nothing"


def check_value(arch: str) -> None:
    _value(arch, None)


def check_value_topk(arch: str) -> None:
    _value(arch, 3)


COEFFICIENTS = [0.2, 0.3, 0.5]


@functools.lru_cache(maxsize=None)
def _checkpoints(arch: str) -> tuple[list[str], dict]:
    """Three saved checkpoints of ``arch`` and the float64 average of their state dicts (as float32)."""
    models = [build(arch, 64, 20 + i) for i in range(3)]
    paths = []
    for i, m in enumerate(models):
        path = Path(_tmp()) / f"{arch}-{i}"
        m.save_pretrained(path)
        paths.append(str(path))
    states = [m.state_dict() for m in models]
    want = {k: sum(c * s[k].double() for c, s in zip(COEFFICIENTS, states)).float() for k in states[0]}
    return paths, want


def _equal_average(got: dict, want: dict) -> None:
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
    bad = [k for k in want if not torch.allclose(got[k], want[k], rtol=1e-6, atol=1e-7)]
    assert not bad, f"tensors differ from the torch average: {bad[:5]}"


def check_merge(arch: str) -> None:
    paths, want = _checkpoints(arch)
    out = Path(_tmp()) / f"{arch}-merged"
    mogen.merge(paths, COEFFICIENTS, str(out), progress=False, overwrite=True)
    merged = type(model(arch, "bl", 0)).from_pretrained(out)
    _equal_average(merged.state_dict(), want)


def check_merge_into(arch: str) -> None:
    paths, want = _checkpoints(arch)
    live = build(arch, 64, 99)
    mogen.merge_into(live, paths, COEFFICIENTS)
    _equal_average(live.state_dict(), want)


def check_search(arch: str) -> None:
    bl, ids, mask, rows = _prompts()
    base = model(arch, "bl", 0)
    guides = [_pair(arch, "bl", 1), _pair(partner(arch), "ms", 11)]
    want = base.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=STEPS)
    got = mogen.search(base, ids, mask, guides=guides, tokenizer=bl, weights=[0.0, 0.0], beam_width=1, expansion=1,
                       chunk_length=3, max_new_tokens=STEPS, top_k=1)
    assert torch.equal(got, want), (got.tolist(), want.tolist())
    out = mogen.search(base, ids, mask, guides=guides, tokenizer=bl, weights=[1.0, 0.7], beam_width=2, expansion=2,
                       chunk_length=3, max_new_tokens=STEPS, temperature=2.0,
                       generator=torch.Generator().manual_seed(0), return_scores=True)
    assert _check_beams(out, base, guides, rows, [1.0, 0.7], bl) >= len(rows)


@dataclass(frozen=True)
class Feature:
    """A column of the matrix: its heading and its check (raises AssertionError on failure)."""

    heading: str
    check: Callable[[str], None]


FEATURES: dict[str, Feature] = {
    "zero": Feature("weights 0 = `base.generate`", check_zero),
    "foreign_guide": Feature("guide of another arch + tokenizer", check_foreign_guide),
    "as_foreign_guide": Feature("as guide with own tokenizer", check_as_foreign_guide),
    "value": Feature("value model, full head", check_value),
    "value_topk": Feature("value model, `top_k` (K2)", check_value_topk),
    "merge": Feature("`merge` + `from_pretrained`", check_merge),
    "merge_into": Feature("`merge_into` live model", check_merge_into),
    "search": Feature("chunk search (cache reorder)", check_search),
}

_DECODING = ("zero", "foreign_guide", "as_foreign_guide", "value", "value_topk", "search")
#: (architecture, feature) -> a regex the refusal's message must match; every other cell must pass.
EXPECTED_REFUSALS: dict[tuple[str, str], str] = {
    ("mamba", "as_foreign_guide"): r"linear_attention layers.*cannot skip",
    ("mixtral", "merge_into"): r"is converted by transformers when MixtralForCausalLM loads it",
    **{("rwkv", f): r"does not keep its state in a transformers KV cache" for f in _DECODING},
    **{("t5", f): r"encoder-decoder" for f in _DECODING},
}


# --------------------------------------------------------------------------- #
# Running cells and writing the matrix
# --------------------------------------------------------------------------- #


@dataclass
class Outcome:
    """What one cell did: ``"pass"``, ``"refused"`` (mogen raised ValueError / TypeError) or ``"fail"``."""

    status: str
    message: str = ""
    seconds: float = 0.0


@functools.lru_cache(maxsize=None)
def _tmp() -> str:
    """One temporary folder per process for the checks' checkpoints, removed at exit."""
    path = tempfile.mkdtemp(prefix="mogen-arch-")
    atexit.register(shutil.rmtree, path, True)
    return path


def run_cell(arch: str, feature: str) -> Outcome:
    """Run one check; a ValueError / TypeError (mogen's refusals) is a refusal, an AssertionError a failure."""
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            FEATURES[feature].check(arch)
    except (ValueError, TypeError) as exc:
        return Outcome("refused", f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
    except AssertionError as exc:
        return Outcome("fail", str(exc)[:500] or "assertion failed", time.perf_counter() - t0)
    return Outcome("pass", "", time.perf_counter() - t0)


def expected(arch: str, feature: str) -> Optional[str]:
    """The regex a refusal of this cell must match, or None when the cell must pass."""
    return EXPECTED_REFUSALS.get((arch, feature))


def _short(message: str) -> str:
    """A refusal's reason: the message without the exception type and the argument name before it."""
    text = re.sub(r"^\w+Error: ", "", message)
    text = re.sub(r"^[\w.\[\]]+: ", "", text)
    return text.split("\n")[0]


def results_body(outcomes: dict[tuple[str, str], Outcome]) -> list[str]:
    """The markdown of the matrix: one row per architecture, one column per feature, refusals as notes."""
    import transformers

    head = ["architecture", "class", "cache layers", "tied head"] + [f.heading for f in FEATURES.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for arch, spec in ARCHITECTURES.items():
        cells = [spec.label, *(f"`{x}`" if i == 0 else x for i, x in enumerate(describe(arch)))]
        for feature in FEATURES:
            o = outcomes[(arch, feature)]
            if o.status == "pass":
                cells.append("pass")
                continue
            reason = _short(o.message)
            if reason not in notes:
                notes.append(reason)
            cells.append(f"{o.status} ({notes.index(reason) + 1})")
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(o.seconds for o in outcomes.values())
    passed = sum(o.status == "pass" for o in outcomes.values())
    refused = sum(o.status == "refused" for o in outcomes.values())
    failed = len(outcomes) - passed - refused
    out = [f"Tiny random configs of each architecture (transformers {transformers.__version__}), built in-process; "
           f"every cell is a check of `tests/test_architectures.py` run on the machine above "
           f"({passed} pass, {refused} refused with the reason below, {failed} failed; {total:.1f} s of checks).",
           "", *lines]
    if notes:
        out += ["", "Refused, with mogen's error:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    out += ["", "What each column checks (the docstring of `tests/architectures.py` has the details):", "",
            "- weights 0: `mogen.generate` with all-zero guide weights returns `base.generate`'s greedy tokens "
            "exactly, left-padded batch;",
            "- guide of another arch + tokenizer: a GPT-NeoX guide pair (Llama for GPT-NeoX) with another "
            "tokenizer steers this base, tokens equal to an uncached step-by-step reference;",
            "- as guide with own tokenizer: this architecture as that guide, on a base of the other: `generate` "
            "equals the reference and chunk-search scores equal an uncached float64 re-scoring;",
            "- value model: a value model of the architecture saved in mogen's format loads unchanged and guides "
            "exactly as the reference, with the full head and with `top_k=3` (K2);",
            "- `merge` / `merge_into`: three checkpoints merged to a folder (loaded with `from_pretrained`) and into "
            "a live model equal the torch average of their state dicts, tied embeddings included;",
            f"- chunk search: W=1, kappa=1, `top_k=1` with zero weights equals greedy `base.generate`; W=kappa=2 "
            f"beam scores equal the float64 re-scoring. Sliding windows are {WINDOW} tokens, shorter than the "
            "prompts."]
    return out
