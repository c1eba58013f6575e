"""Tiny causal LMs and tokenizers built in-process for the decoding tests.

Nothing is downloaded: models are random-init ``transformers`` Llama / GPT-2
configs seeded with ``torch.manual_seed``; tokenizers come from ``mogen.tiny``
or are built here (a character-level one whose every token is one whole
character, so any token sequence is its text's only encoding).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from mogen.decoding.guides import ProxyGuide


def tiny_llama(vocab_size: int, seed: int, *, hidden: int = 32, layers: int = 2, heads: int = 4,
               max_positions: int = 256, eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
               bos_token_id: Optional[int] = None):
    """A random-init Llama causal LM in eval mode (fp32, CPU, sdpa attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    # Random init gives nearly flat logits; a larger LM head makes argmax
    # decisions clear-cut so that tiny numeric differences (padding, batching)
    # do not flip greedy choices between equivalent computations.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model


def tiny_gpt2(vocab_size: int, seed: int, *, hidden: int = 32, layers: int = 2, heads: int = 4,
              max_positions: int = 128, eos_token_id: Optional[int] = None):
    """A random-init GPT-2 LM (learned absolute positions), eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
                     eos_token_id=eos_token_id, bos_token_id=eos_token_id)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = eos_token_id
    return model


def proxy_guide(vocab_size: int, seed: int, weight: float = 1.0, tokenizer=None, **kw) -> ProxyGuide:
    """A guide of two random tiny Llamas (seeds ``seed`` and ``seed + 1``)."""
    return ProxyGuide(tiny_llama(vocab_size, seed, **kw), tiny_llama(vocab_size, seed + 1, **kw), weight,
                      tokenizer=tokenizer)


@functools.lru_cache(maxsize=None)
def byte_level_tokenizer():
    from mogen import tiny

    tok = tiny.byte_level_bpe()
    tok.padding_side = "left"
    return tok


@functools.lru_cache(maxsize=None)
def metaspace_tokenizer():
    from mogen import tiny

    tok = tiny.metaspace_bpe()
    tok.padding_side = "left"
    return tok


CHAR_ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ.,!?'\néüß日本語🙂"


def char_tokenizer(alphabet: str = CHAR_ALPHABET):
    """A character-level fast tokenizer without special tokens: one token per character, no merges.

    Every token decodes to one complete character, so any id sequence is the
    only encoding of its text - the case where the cross-tokenizer path must
    reproduce the shared-tokenizer path exactly. (Special tokens would break
    that: they have no text, so a guide reading text cannot see them.)
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def left_pad(tokenizer, texts: Sequence[str]):
    """``(input_ids, attention_mask)`` of ``texts``, left-padded."""
    tokenizer.padding_side = "left"
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int = 0):
    """Left-pad lists of ids into ``(input_ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[b, width - len(r):] = 1
    return ids, mask


# --------------------------------------------------------------------------- #
# An independent step-by-step reference: no KV caches, no kernels.
# --------------------------------------------------------------------------- #


def _last_logits(model, rows: Sequence[Sequence[int]], vocab: int) -> torch.Tensor:
    """Each row's next-token logits from a full forward over its unpadded ids, ``[B, vocab]``."""
    out = []
    for r in rows:
        ids = torch.tensor([list(r)], dtype=torch.long)
        out.append(model(input_ids=ids, use_cache=False).logits[0, -1, :vocab].double())
    return torch.stack(out)


def reference_greedy(base, guides: Sequence[ProxyGuide], prompts: Sequence[Sequence[int]], weights,
                     steps: int, *, beta: float = 1.0, vocab: Optional[int] = None,
                     eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None) -> list[list[int]]:
    """Greedy multi-objective decoding recomputing every model's full-sequence logits each step.

    docs/design.md section 1 with plain torch ops in float64:
    ``s = log_softmax(z_b) + beta * sum_i w_i (log_softmax(z_ei / t_i) - log_softmax(z_ri / t_i))``.
    Rows are run unpadded, so no attention mask or position bookkeeping is involved.
    """
    vocab = vocab or base.config.vocab_size
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.dim() == 1:
        w = w.unsqueeze(0).expand(len(prompts), -1)
    rows = [list(p) for p in prompts]
    done = [False] * len(rows)
    with torch.no_grad():
        for _ in range(steps):
            s = torch.log_softmax(_last_logits(base, rows, vocab), dim=-1)
            for i, g in enumerate(guides):
                if not bool((w[:, i] != 0).any()):
                    continue
                le = torch.log_softmax(_last_logits(g.expert, rows, vocab) / g.temperature, dim=-1)
                lr = torch.log_softmax(_last_logits(g.reference, rows, vocab) / g.temperature, dim=-1)
                s = s + beta * w[:, i : i + 1] * (le - lr)
            nxt = s.argmax(dim=-1).tolist()
            for b in range(len(rows)):
                if done[b]:
                    rows[b].append(pad_token_id)
                    continue
                rows[b].append(nxt[b])
                if eos_token_id is not None and nxt[b] == eos_token_id:
                    done[b] = True
            if all(done):
                break
    return rows


def reference_greedy_cross(base, base_tokenizer, guides: Sequence[ProxyGuide], prompts: Sequence[Sequence[int]],
                           weights, steps: int, *, beta: float = 1.0) -> list[list[int]]:
    """Greedy decoding with guides that have their own tokenizers, recomputed from scratch each step.

    (Guides with ``tokenizer=None`` read the base's ids, as in :func:`reference_greedy`.)

    Per step and row: the base's full-sequence logits; each guide reads
    ``prefix + encode(decode(base ids))`` with its own tokenizer (no cache, no
    look-behind window), its log-ratio is gathered through
    ``mogen.vocab.build_vocab_map`` (0 where unmapped), and a row whose last
    token left its text ending in an incomplete character gets no guide term.
    """
    from mogen.decoding.retokenize import special_prefix
    from mogen.vocab import build_vocab_map

    vocab = len(base_tokenizer)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.dim() == 1:
        w = w.unsqueeze(0).expand(len(prompts), -1)
    rows = [list(p) for p in prompts]
    n_prompt = [len(p) for p in prompts]

    def text(ids):
        return base_tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    with torch.no_grad():
        for _ in range(steps):
            s = torch.log_softmax(_last_logits(base, rows, vocab), dim=-1)
            for i, g in enumerate(guides):
                if g.tokenizer is None:  # shares the base's ids
                    le = torch.log_softmax(_last_logits(g.expert, rows, vocab) / g.temperature, dim=-1)
                    lr = torch.log_softmax(_last_logits(g.reference, rows, vocab) / g.temperature, dim=-1)
                    s = s + beta * w[:, i : i + 1] * (le - lr)
                    continue
                vg = len(g.tokenizer)
                vmap = build_vocab_map(base_tokenizer, g.tokenizer).long()
                for b, r in enumerate(rows):
                    t = text(r)
                    if len(r) > n_prompt[b] and (t.endswith("\ufffd") or t == text(r[:-1])):
                        continue  # the guide has not seen this row's partial character yet
                    gids = special_prefix(g.tokenizer) + g.tokenizer(t, add_special_tokens=False)["input_ids"]
                    le = torch.log_softmax(_last_logits(g.expert, [gids], vg)[0] / g.temperature, dim=-1)
                    lr = torch.log_softmax(_last_logits(g.reference, [gids], vg)[0] / g.temperature, dim=-1)
                    diff = le - lr
                    term = torch.where(vmap >= 0, diff[vmap.clamp(min=0)], torch.zeros_like(diff[:1]))
                    s[b] = s[b] + beta * w[b, i] * term
            nxt = s.argmax(dim=-1).tolist()
            for b in range(len(rows)):
                rows[b].append(nxt[b])
    return rows


def byte_token_ids(byte_level_tok, text: str) -> list[int]:
    """One byte-level token per UTF-8 byte of ``text`` (multi-byte characters split)."""
    from mogen.vocab import _bytes_to_unicode

    table = _bytes_to_unicode()
    return [byte_level_tok.convert_tokens_to_ids(table[b]) for b in text.encode("utf-8")]


def script_model(model, scripts: Sequence[Sequence[int]]):
    """Make ``model`` emit ``scripts[b][k]`` as row b's k-th new token (greedy).

    A forward hook adds a large bonus to the scripted id of each row, one
    entry per forward call (prefill included). Returns the hook handle.
    """
    state = {"call": 0}

    def hook(module, args, kwargs, out):
        k = state["call"]
        state["call"] += 1
        for b, script in enumerate(scripts):
            if k < len(script):
                out.logits[b, -1, script[k]] += 1e4
        return out

    return model.register_forward_hook(hook, with_kwargs=True)


def nudge_model(model, script: Sequence[int], bonus: float):
    """Make ``script[k]`` likely, not certain, at ``model``'s k-th forward call (prefill included), in every row.

    A forward hook adds ``bonus`` to the scripted id's last logits of every row, however many rows a call has
    (a search's candidates); calls past the script are left alone. Returns the hook handle.
    """
    state = {"call": 0}

    def hook(module, args, kwargs, out):
        k = state["call"]
        state["call"] += 1
        if k < len(script):
            out.logits[:, -1, script[k]] += bonus
        return out

    return model.register_forward_hook(hook, with_kwargs=True)


def value_llama(vocab_size: int, seed: int, *, scale: float = 4.0, **kw):
    """A random tiny Llama turned into a value model (full head kept, random values of spread ~``scale``)."""
    from mogen.value_format import make_value_model

    model = tiny_llama(vocab_size, seed, **kw)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale / 8.0)
    return make_value_model(model, objectives=[f"objective{seed}"], reset_head=False)


def _guide_term_rows(g, rows, n_prompt, base_tokenizer, vocab, vmap_cache):
    """Per row, the guide's term over the base vocabulary in float64 ``[B, V_b]`` (None entries: no term).

    Proxy: ``log_softmax(z_e / t) - log_softmax(z_r / t)``; value: the head's ``Q``.
    A guide with its own tokenizer reads ``prefix + encode(decode(base ids))``
    and is gathered through ``build_vocab_map`` (0 where unmapped).
    """
    from mogen.decoding.guides import ProxyGuide
    from mogen.decoding.retokenize import special_prefix
    from mogen.vocab import build_vocab_map

    def term(ids_rows, width):
        if isinstance(g, ProxyGuide):
            le = torch.log_softmax(_last_logits(g.expert, ids_rows, width) / g.temperature, dim=-1)
            lr = torch.log_softmax(_last_logits(g.reference, ids_rows, width) / g.temperature, dim=-1)
            return le - lr
        return _last_logits(g.model, ids_rows, width)

    if g.tokenizer is None:
        return list(term(rows, vocab))
    key = id(g.tokenizer)
    if key not in vmap_cache:
        vmap_cache[key] = build_vocab_map(base_tokenizer, g.tokenizer).long()
    vmap = vmap_cache[key]
    def text(ids):
        return base_tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    out = []
    for r, n in zip(rows, n_prompt):
        t = text(r)
        if len(r) > n and (t.endswith("\ufffd") or t == text(r[:-1])):
            out.append(None)  # the guide has not seen this row's partial character yet
            continue
        gids = special_prefix(g.tokenizer) + g.tokenizer(t, add_special_tokens=False)["input_ids"]
        diff = term([gids], len(g.tokenizer))[0]
        out.append(torch.where(vmap >= 0, diff[vmap.clamp(min=0)], torch.zeros_like(diff[:1])))
    return out


def reference_greedy_guided(base, guides, prompts: Sequence[Sequence[int]], weights, steps: int, *,
                            beta: float = 1.0, gamma: float = 1.0, base_tokenizer=None,
                            vocab: Optional[int] = None) -> list[list[int]]:
    """Greedy decoding with proxy and value guides, every model recomputed from scratch each step, float64.

    ``s = log_softmax(z_b) + beta * sum_i w_i term_i + gamma * sum_j u_j Q_j`` (docs/design.md section 1). Value
    guides with ``top_k = k`` value only the k best ids of the rest of ``s`` (ties: lower id first); every
    other id is out.
    """
    from mogen.decoding.guides import ValueGuide

    vocab = vocab or (len(base_tokenizer) if base_tokenizer is not None else base.config.vocab_size)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.dim() == 1:
        w = w.unsqueeze(0).expand(len(prompts), -1)
    rows = [list(p) for p in prompts]
    n_prompt = [len(p) for p in prompts]
    vmaps: dict = {}
    with torch.no_grad():
        for _ in range(steps):
            rest = torch.log_softmax(_last_logits(base, rows, vocab), dim=-1)
            topk_q = []
            for i, g in enumerate(guides):
                is_value = isinstance(g, ValueGuide)
                coef = (gamma if is_value else beta) * w[:, i]
                if not bool((coef != 0).any()):
                    continue
                terms = _guide_term_rows(g, rows, n_prompt, base_tokenizer, vocab, vmaps)
                full = torch.stack([t if t is not None else torch.zeros(vocab, dtype=torch.float64) for t in terms])
                if is_value and g.top_k is not None:
                    topk_q.append((coef, full, g.top_k))
                else:
                    rest = rest + coef.unsqueeze(1) * full
            if topk_q:
                k = topk_q[0][2]
                order = torch.sort(rest, dim=-1, descending=True, stable=True).indices[:, :k]
                cand = rest.gather(1, order)
                for coef, full, _ in topk_q:
                    cand = cand + coef.unsqueeze(1) * full.gather(1, order)
                by_id = torch.sort(order, dim=-1)
                best = cand.gather(1, by_id.indices).argmax(dim=-1, keepdim=True)
                nxt = by_id.values.gather(1, best).squeeze(1).tolist()
            else:
                nxt = rest.argmax(dim=-1).tolist()
            for b in range(len(rows)):
                rows[b].append(nxt[b])
    return rows
