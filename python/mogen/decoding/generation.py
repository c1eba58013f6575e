"""``mogen.generate``: token-level multi-objective decoding (MPAW eq. 12, DESIGN section 1).

Every step, for every row ``b`` and base token ``v``::

    s(v) = log_softmax(z_b)(v) + beta * sum_i w[b, i] * (log p_ei(m_i(v)) - log p_ri(m_i(v)))

then the next token is ``argmax s`` (greedy) or a draw from
``softmax(s / temperature)`` after top-k / top-p. ``m_i`` is the identity for a
guide that shares the base's tokenizer and a :func:`mogen.vocab.build_vocab_map`
map otherwise.

How the loop is built (and why):

- every model keeps its own :class:`~transformers.DynamicCache` and runs one
  forward per step for the whole batch; a guide whose weight is 0 on every row
  is never run;
- left padding follows ``transformers``: position ids are ``cumsum(mask) - 1``
  at prefill and count on by one per step; the mask is dropped when no row is
  padded (as ``generate`` does, so all-zero weights give its tokens exactly);
- fusion and top-k go through :mod:`mogen.ops` (the compiled kernel, or the
  reference); greedy asks for the single best id, never the full row;
- the only host synchronisation per step is the "all rows finished" check (and
  the new tokens themselves when a streamer or a guide with its own tokenizer
  needs them on the host);
- a guide with its own tokenizer reads the generated text: see
  :mod:`mogen.decoding.crossguide` and :mod:`mogen.decoding.retokenize` (where
  the approximation lies).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import torch

from .. import ops
from ..vocab import build_vocab_map
from .crossguide import RetokenizingGroup
from .guides import ProxyGuide, logits_width, shares_tokenizer
from .models import LMRunner, context_length, has_placement, output_device, param_devices
from .sampling import TokenSelector
from .weights import as_guide_list, resolve_weights

__all__ = ["generate", "LockstepModels", "check_devices", "check_left_padding"]

TokenIds = Union[int, Sequence[int], None]


def _id_list(value: TokenIds, name: str) -> Optional[list[int]]:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise TypeError(f"{name} must be an int or a non-empty list of ints, got {value!r}")


def _normal_tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device`` as a normal (non-inference) tensor.

    mogen.ops caches its checks of weights and maps by the tensor's version
    counter, which tensors made under ``torch.inference_mode`` lack.
    """
    with torch.inference_mode(False):
        out = t.to(device)
        return out.clone() if out.is_inference() else out


def check_left_padding(attention_mask: torch.Tensor) -> bool:
    """Validate a left-padded ``[B, T]`` mask; return whether any row is padded.

    Raises ValueError for right padding, holes, values other than 0/1, or an
    all-padding row.
    """
    m = attention_mask
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("attention_mask must hold only 0 and 1")
    if not bool((m[:, -1] == 1).all()):
        raise ValueError(
            "attention_mask must be left-padded (every row ends with a real token): tokenize with "
            "tokenizer.padding_side = 'left'"
        )
    if m.shape[1] > 1 and not bool((m[:, 1:] >= m[:, :-1]).all()):
        raise ValueError("attention_mask must be left-padded: zeros only before the first real token of a row")
    return not bool((m == 1).all())


def check_devices(models: dict[str, torch.nn.Module]) -> None:
    """All models on one device, unless one was placed with ``device_map``.

    Raises ValueError naming the devices otherwise.
    """
    where = {name: param_devices(m) for name, m in models.items()}
    devices = set().union(*where.values()) if where else set()
    if len(devices) <= 1 or any(has_placement(m) for m in models.values()):
        return
    listing = ", ".join(f"{name}: {', '.join(sorted(str(d) for d in devs))}" for name, devs in where.items())
    raise ValueError(
        f"models are on different devices ({listing}) and none was placed with device_map; "
        "move them to one device, or load them with from_pretrained(..., device_map=...) to spread them "
        "over several GPUs"
    )


class LockstepModels:
    """Guide models that read the base's token ids as they are (one runner per distinct model)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.runners: list[LMRunner] = []
        self._by_model: dict[int, int] = {}
        self._last: list[torch.Tensor] = []

    def add(self, runner: LMRunner) -> int:
        """Register a model; returns its index for :meth:`logits`. A model given twice runs once."""
        key = id(runner.model)
        if key not in self._by_model:
            self._by_model[key] = len(self.runners)
            self.runners.append(runner)
        return self._by_model[key]

    def reset(self) -> None:
        for r in self.runners:
            r.reset()

    def feed(self, ids: torch.Tensor, mask: Optional[torch.Tensor], positions: torch.Tensor) -> None:
        """Run every model once on ``ids [B, n]`` and keep its last logits ``[B, V]``."""
        self._last = [r.forward(ids, mask, positions)[:, -1].to(self.device) for r in self.runners]

    def logits(self, index: int) -> torch.Tensor:
        return self._last[index]


class _Decoding:
    """One ``generate`` call: validated arguments, model runners and the loop."""

    def __init__(
        self,
        base: Any,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        *,
        guides: Any,
        tokenizer: Any,
        weights: Any,
        beta: float,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_k: Optional[int],
        top_p: Optional[float],
        eos_token_id: TokenIds,
        pad_token_id: Optional[int],
        generator: Optional[torch.Generator],
    ) -> None:
        if not (isinstance(base, torch.nn.Module) and hasattr(base, "config")):
            raise TypeError(f"base must be a transformers causal LM, got {type(base).__name__}")
        if getattr(base.config, "is_encoder_decoder", False):
            raise ValueError("base is an encoder-decoder model; mogen.generate drives decoder-only LMs")
        self.base_model = base
        self.device = output_device(base)

        # -- prompt ----------------------------------------------------------
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a LongTensor [B, T], got {type(input_ids).__name__}")
        if input_ids.dim() == 1:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}; use input_ids[None]")
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty [B, T] tensor, got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
        self.input_ids = input_ids.to(self.device, torch.long)
        batch, length = self.input_ids.shape
        if attention_mask is None:
            mask = torch.ones_like(self.input_ids)
        else:
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (batch, length):
                shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
                raise ValueError(f"attention_mask must be a [B, T] = [{batch}, {length}] tensor, got {shape}")
            mask = attention_mask.to(self.device, torch.long)
        self.padded = check_left_padding(mask)
        self.prompt_mask = mask
        lengths = mask.sum(dim=1)
        longest = int(lengths.max())

        # -- options ---------------------------------------------------------
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(float(beta)):
            raise ValueError(f"beta must be a finite number, got {beta!r}")
        self.beta = float(beta)

        # -- guides and weights ------------------------------------------------
        guide_list = as_guide_list(guides)
        shared = [shares_tokenizer(tokenizer, g.tokenizer) for g in guide_list]
        for i, (g, same) in enumerate(zip(guide_list, shared)):
            if not same and tokenizer is None:
                raise ValueError(
                    f"guides[{i}] has its own tokenizer but no base tokenizer was given: pass tokenizer=<the base "
                    "model's tokenizer> so the generated text can be re-tokenized for the guide"
                )
        w, active = resolve_weights(weights, guide_list, batch)
        self.guides = guide_list
        self.active = [i for i, a in enumerate(active) if a]
        w = w[..., self.active] if w.dim() == 2 else w[self.active]
        # One tensor object for every step, so mogen.ops validates it once. Made
        # outside inference mode: ops caches checks by the tensor's version
        # counter, which inference tensors lack.
        self.weights = _normal_tensor(w, self.device)

        # -- vocabularies ------------------------------------------------------
        base_width = logits_width(base)
        if tokenizer is not None:
            self.vocab_size = len(tokenizer)
            if self.vocab_size > base_width:
                raise ValueError(
                    f"the tokenizer has {self.vocab_size} tokens but the base model's LM head only {base_width}"
                )
        else:
            self.vocab_size = base_width
        runners: dict[str, tuple[torch.nn.Module, int]] = {"base": (base, self.vocab_size)}
        self.maps: list[Optional[torch.Tensor]] = []
        for i in self.active:
            g = guide_list[i]
            if shared[i]:
                need = self.vocab_size
                for role, model in (("expert", g.expert), ("reference", g.reference)):
                    width = logits_width(model)
                    if width < need or (tokenizer is None and width != need):
                        raise ValueError(
                            f"guides[{i}].{role} has a vocabulary of {width} but the base has {need}; a guide "
                            "without its own tokenizer must share the base's vocabulary (pass tokenizer= so "
                            "padded LM-head rows are excluded, or give the guide its tokenizer)"
                        )
                self.maps.append(None)
            else:
                need = len(g.tokenizer)
                for role, model in (("expert", g.expert), ("reference", g.reference)):
                    width = logits_width(model)
                    if width < need:
                        raise ValueError(
                            f"guides[{i}].{role} has a vocabulary of {width} but its tokenizer has {need} tokens"
                        )
                vmap = build_vocab_map(tokenizer, g.tokenizer)
                self.maps.append(_normal_tensor(vmap, self.device))
            runners[f"guides[{i}].expert"] = (g.expert, need)
            runners[f"guides[{i}].reference"] = (g.reference, need)
        check_devices({name: model for name, (model, _) in runners.items()})

        # -- context lengths ---------------------------------------------------
        # Guides with their own tokenizer count their own tokens as they go.
        lockstep = ["base"] + [f"guides[{i}].{role}" for i in self.active if shared[i] for role in ("expert", "reference")]
        for name in lockstep:
            limit = context_length(runners[name][0])
            if limit is None:
                continue
            if longest > limit:
                raise ValueError(f"the prompt has {longest} tokens but {name}'s context is {limit} tokens")
            if longest + max_new_tokens > limit:
                raise ValueError(
                    f"the prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds {name}'s context "
                    f"of {limit} tokens; lower max_new_tokens"
                )

        # -- special tokens and the sampler ------------------------------------
        gen_cfg = getattr(base, "generation_config", None)
        if eos_token_id is None and gen_cfg is not None:
            eos_token_id = gen_cfg.eos_token_id
        eos = _id_list(eos_token_id, "eos_token_id")
        if pad_token_id is None and gen_cfg is not None:
            pad_token_id = gen_cfg.pad_token_id
        if pad_token_id is None and eos is not None:  # as transformers does
            pad_token_id = eos[0]
        if isinstance(pad_token_id, (list, tuple)):
            pad_token_id = pad_token_id[0]
        self.eos = None if eos is None else torch.tensor(eos, dtype=torch.long, device=self.device)
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)
        self.selector = TokenSelector(
            self.vocab_size, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            generator=generator, device=self.device,
        )
        self.temperatures = [guide_list[i].temperature for i in self.active]

        # -- runners -----------------------------------------------------------
        # Models are grouped by what they read: the base's ids (lockstep) or the
        # text through one tokenizer (a group per tokenizer). A model used by
        # several guides (a shared reference) runs once per step.
        self.base = LMRunner(base, self.vocab_size, "base")
        self.lockstep = LockstepModels(self.device)
        self.cross: list[RetokenizingGroup] = []
        # slot k of the fusion inputs -> (group, expert index, reference index)
        self.slots: list[tuple[Any, int, int]] = []
        for k, i in enumerate(self.active):
            g = guide_list[i]
            e = LMRunner(g.expert, runners[f"guides[{i}].expert"][1], f"guides[{i}].expert")
            r = LMRunner(g.reference, runners[f"guides[{i}].reference"][1], f"guides[{i}].reference")
            if self.maps[k] is None:
                group: Any = self.lockstep
            else:
                # Identical tokenizers (e.g. loaded once per guide folder) share a group.
                group = next((c for c in self.cross if shares_tokenizer(c.tokenizer, g.tokenizer)), None)
                if group is None:
                    group = RetokenizingGroup(g.tokenizer, tokenizer, self.device, f"guides[{i}]")
                    self.cross.append(group)
            self.slots.append((group, group.add(e), group.add(r)))
        self.vocab_maps = None if all(m is None for m in self.maps) else self.maps
        self.tokenizer = tokenizer

    # -- one step's fusion ------------------------------------------------------
    def _guide_logits(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        experts = [group.logits(e) for group, e, _ in self.slots]
        refs = [group.logits(r) for group, _, r in self.slots]
        return experts, refs

    def _select(self, base_logits: torch.Tensor) -> torch.Tensor:
        if not self.slots:
            def full() -> torch.Tensor:
                return torch.log_softmax(base_logits.float(), dim=-1)

            def topk(k: int) -> tuple[torch.Tensor, torch.Tensor]:
                if k == 1:  # argmax keeps transformers' tie-breaking (first index)
                    ids = torch.argmax(base_logits, dim=-1, keepdim=True)
                    return base_logits.gather(1, ids).float(), ids
                return torch.topk(base_logits.float(), k, dim=-1)

            return self.selector(full, topk)
        experts, refs = self._guide_logits()
        kwargs = dict(vocab_maps=self.vocab_maps, beta=self.beta, temperatures=self.temperatures)
        return self.selector(
            lambda: ops.fused_log_ratio(base_logits, experts, refs, self.weights, **kwargs),
            lambda k: ops.fused_log_ratio_topk(base_logits, experts, refs, self.weights, k, **kwargs),
        )

    # -- the loop ----------------------------------------------------------------
    def run(self, streamer: Any = None, observer: Optional[Callable[["_Decoding", int], None]] = None) -> torch.Tensor:
        ids = self.input_ids
        batch, length = ids.shape
        steps = self.max_new_tokens
        if streamer is not None:
            streamer.put(ids.cpu())
        if steps == 0:
            if streamer is not None:
                streamer.end()
            return ids
        mask_full: Optional[torch.Tensor] = None
        if self.padded:
            mask_full = torch.ones(batch, length + steps, dtype=torch.long, device=self.device)
            mask_full[:, :length] = self.prompt_mask
        positions = (self.prompt_mask.cumsum(-1) - 1).clamp(min=0)
        prompt_mask = mask_full[:, :length] if mask_full is not None else None
        base_logits = self.base.forward(ids, prompt_mask, positions)[:, -1]
        self.lockstep.feed(ids, prompt_mask, positions)
        if self.cross:
            rows = [row[m.bool()].tolist() for row, m in zip(ids.cpu(), self.prompt_mask.cpu())]
            for g in self.cross:
                g.prefill(rows)
        if observer is not None:
            observer(self, -1)
        next_pos = positions[:, -1:] + 1
        unfinished = torch.ones(batch, dtype=torch.bool, device=self.device)
        pad = None if self.pad_token_id is None else torch.full((batch,), self.pad_token_id, device=self.device)
        out: list[torch.Tensor] = []
        for step in range(steps):
            tokens = self._select(base_logits)
            if self.eos is not None:
                if pad is not None:
                    tokens = torch.where(unfinished, tokens, pad)
                unfinished = unfinished & ~torch.isin(tokens, self.eos)
            out.append(tokens)
            if streamer is not None:
                streamer.put(tokens.cpu())
            if step == steps - 1:
                break
            live: Optional[list[bool]] = None
            if self.cross:
                host_tokens = tokens.tolist()
                live = unfinished.tolist()
                if not any(live):
                    break
            elif self.eos is not None and not bool(unfinished.any()):  # the one sync per step
                break
            col = tokens.unsqueeze(1)
            cur_mask = mask_full[:, : length + step + 1] if mask_full is not None else None
            base_logits = self.base.forward(col, cur_mask, next_pos)[:, -1]
            if self.lockstep.runners:
                self.lockstep.feed(col, cur_mask, next_pos)
            for g in self.cross:
                g.push(host_tokens, live)
            next_pos = next_pos + 1
            if observer is not None:
                observer(self, step)
        if streamer is not None:
            streamer.end()
        return torch.cat([ids, torch.stack(out, dim=1)], dim=1)


def generate(
    base: Any,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    guides: Union[ProxyGuide, Sequence[ProxyGuide], None],
    tokenizer: Any = None,
    weights: Any = None,
    beta: float = 1.0,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_token_id: TokenIds = None,
    pad_token_id: Optional[int] = None,
    streamer: Any = None,
    generator: Optional[torch.Generator] = None,
    _observer: Optional[Callable[[Any, int], None]] = None,
) -> torch.Tensor:
    """Decode with ``base`` steered by weighted proxy guides; ``[B, T + new]`` token ids.

    Drop-in for ``base.generate(input_ids, attention_mask=..., ...)``: left
    padding, a row ends at ``eos_token_id`` and is then filled with
    ``pad_token_id``, generation stops when every row has ended, ``streamer``
    (e.g. ``transformers.TextStreamer``) gets the prompt then each new token.

    Args:
        base: the strong causal LM (``transformers``), in eval mode.
        input_ids: ``[B, T]`` prompt ids, left-padded.
        attention_mask: ``[B, T]`` 1 for real tokens, 0 for left padding.
        guides: :class:`mogen.ProxyGuide` or a list of them (may be empty).
        tokenizer: the base's tokenizer. Required when a guide has its own
            tokenizer; also limits scores to its real vocabulary.
        weights: ``[M]`` for all rows or ``[B, M]`` per row (a batch may serve
            users with different preferences); default: the guides' weights.
            A guide with weight 0 on every row is not run.
        beta: scale of the guidance (DESIGN section 1).
        max_new_tokens: at most this many tokens are appended.
        do_sample: sample instead of greedy argmax.
        temperature: sampling temperature of the fused distribution
            ``softmax(s / temperature)``.
        top_k, top_p: sampling filters (see :mod:`mogen.decoding.sampling`).
        eos_token_id: int or list; default ``base.generation_config``'s.
        pad_token_id: fills rows that ended; default from the generation
            config, else the first eos id (as in ``transformers``).
        streamer: object with ``put(tensor)`` / ``end()``.
        generator: ``torch.Generator`` (on the base's device) for reproducible sampling.

    Returns:
        LongTensor ``[B, T + n]`` on the base's output device, ``n <= max_new_tokens``.

    Raises:
        ValueError / TypeError with the problem named: a guide with its own
        tokenizer and no ``tokenizer``, weights of the wrong shape or not
        finite, a prompt (plus ``max_new_tokens``) longer than a model's
        context, models on different devices without ``device_map``, right
        padding, bad sampling options.
    """
    with torch.no_grad():
        decoding = _Decoding(
            base, input_ids, attention_mask, guides=guides, tokenizer=tokenizer, weights=weights, beta=beta,
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
            top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id, generator=generator,
        )
        return decoding.run(streamer, _observer)
