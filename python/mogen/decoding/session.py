"""One decoding session: the set-up and the per-row state every driver shares (docs/design.md section 2).

``generate``, chunk ``search`` and the logits processor are thin loops over a
:class:`DecodingSession`. :func:`open_session` does the shared set-up (checks,
guide binding, eos / pad, the base's runner); the session keeps the rows'
positions, attention mask and next position, and exposes:

- :meth:`DecodingSession.prefill`: run the prompt through the base (when the
  session drives it) and every guide runner;
- :meth:`DecodingSession.advance`: feed one base token per row;
- :meth:`DecodingSession.reorder`: row ``r`` becomes old row ``index[r]``.
  Every piece of per-row state (the base's cache, the guides' runners, the
  fusion's weights, a scorer, a driver's own rows) registers its reorder once
  with :meth:`DecodingSession.register`, so no driver has to remember them.

Left padding follows ``transformers``: position ids are ``cumsum(mask) - 1`` at
prefill and count on by one per step; the mask is dropped when no row is padded.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .binding import Guidance, bind_guides
from .checks import TokenIds, check_devices, check_prompt, finite_number, id_list
from .guides import logits_width
from .models import LMRunner, context_length, output_device

__all__ = ["DecodingSession", "open_session", "check_base", "base_vocab_size", "check_context", "special_ids"]

Reorder = Callable[[torch.Tensor], None]


def check_base(base: Any) -> None:
    """``base`` is a decoder-only ``transformers`` causal LM."""
    if not (isinstance(base, torch.nn.Module) and hasattr(base, "config")):
        raise TypeError(f"base must be a transformers causal LM, got {type(base).__name__}")
    if getattr(base.config, "is_encoder_decoder", False):
        raise ValueError("base is an encoder-decoder model; mogen.generate drives decoder-only LMs")


def base_vocab_size(base: Any, tokenizer: Any) -> int:
    """The vocabulary the fused scores cover: the tokenizer's (padded LM-head rows excluded), else the head's."""
    width = logits_width(base)
    if tokenizer is None:
        return width
    size = len(tokenizer)
    if size > width:
        raise ValueError(f"the tokenizer has {size} tokens but the base model's LM head only {width}")
    return size


def check_context(models: dict[str, torch.nn.Module], longest: int, max_new_tokens: int) -> None:
    """Prompt plus ``max_new_tokens`` within the context of every model that reads the base's ids."""
    for name, model in models.items():
        limit = context_length(model)
        if limit is None:
            continue
        if longest > limit:
            raise ValueError(f"the prompt has {longest} tokens but {name}'s context is {limit} tokens")
        if longest + max_new_tokens > limit:
            raise ValueError(
                f"the prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds {name}'s context "
                f"of {limit} tokens; lower max_new_tokens"
            )


def special_ids(base: Any, eos_token_id: TokenIds, pad_token_id: Optional[int],
                device: torch.device) -> tuple[Optional[torch.Tensor], Optional[int]]:
    """``(eos ids tensor or None, pad id or None)`` with ``transformers``' defaults from the generation config."""
    gen_cfg = getattr(base, "generation_config", None)
    if eos_token_id is None and gen_cfg is not None:
        eos_token_id = gen_cfg.eos_token_id
    eos = id_list(eos_token_id, "eos_token_id")
    if pad_token_id is None and gen_cfg is not None:
        pad_token_id = gen_cfg.pad_token_id
    if pad_token_id is None and eos is not None:  # as transformers does
        pad_token_id = eos[0]
    if isinstance(pad_token_id, (list, tuple)):
        pad_token_id = pad_token_id[0]
    eos_t = None if eos is None else torch.tensor(eos, dtype=torch.long, device=device)
    return eos_t, None if pad_token_id is None else int(pad_token_id)


class DecodingSession:
    """The rows of one decoding call: guides bound, positions, mask, and who must follow a reorder.

    Args:
        guidance: the bound guides (:func:`~mogen.decoding.binding.bind_guides`).
        input_ids: ``[B, T]`` prompt ids on the session's device.
        prompt_mask: ``[B, T]`` 1 for real tokens (all ones without padding).
        padded: whether any row is left padded (else no mask is passed to the models).
        max_new_tokens: the mask is allocated for this many new tokens (None: it grows as tokens come).
        base: the base's runner, or None when the caller runs the base itself (the logits processor).
        eos, pad_token_id: the eos ids tensor (or None) and the pad id (or None).
    """

    def __init__(self, guidance: Guidance, input_ids: torch.Tensor, prompt_mask: torch.Tensor, *, padded: bool,
                 max_new_tokens: Optional[int] = None, base: Optional[LMRunner] = None,
                 eos: Optional[torch.Tensor] = None, pad_token_id: Optional[int] = None,
                 vocab_size: Optional[int] = None) -> None:
        self.guidance = guidance
        self.runners = guidance.runners
        self.fusion = guidance.fusion
        self.input_ids, self.prompt_mask, self.padded = input_ids, prompt_mask, padded
        self.device = input_ids.device
        self.max_new_tokens = max_new_tokens
        self.base = base
        self.eos, self.pad_token_id = eos, pad_token_id
        self.vocab_size = vocab_size
        self.base_logits: Optional[torch.Tensor] = None
        self.next_pos: Optional[torch.Tensor] = None
        self.produced = 0
        self._mask: Optional[torch.Tensor] = None
        self._reorders: list[Reorder] = []
        if base is not None:
            self.register(base.reorder)
        self.register(self.runners.reorder)
        self.register(self.fusion.reorder)
        self.register(self._reorder_rows)

    def register(self, reorder: Reorder) -> None:
        """``reorder(index)`` is called on every :meth:`reorder` (``index`` int64 on the session's device)."""
        self._reorders.append(reorder)

    def prefill(self) -> Optional[torch.Tensor]:
        """Run the prompt through the base and every guide; returns the base's last logits ``[B, V]`` (or None)."""
        ids = self.input_ids
        batch, length = ids.shape
        positions = (self.prompt_mask.cumsum(-1) - 1).clamp(min=0)
        self._mask = None
        if self.padded:
            width = length + (self.max_new_tokens or 0)
            self._mask = torch.ones(batch, width, dtype=torch.long, device=self.device)
            self._mask[:, :length] = self.prompt_mask
        mask = self.mask()
        if self.base is not None:
            self.base_logits = self.base.forward(ids, mask, positions)[:, -1]
        self.runners.prefill(ids, mask, positions, self.prompt_mask)
        self.next_pos = positions[:, -1:] + 1
        self.produced = 0
        return self.base_logits

    def mask(self) -> Optional[torch.Tensor]:
        """The attention mask over the prompt and the tokens produced so far (None when no row is padded)."""
        if self._mask is None:
            return None
        need = self.input_ids.shape[1] + self.produced
        if self._mask.shape[1] < need:
            extra = self._mask.new_ones(self._mask.shape[0], need - self._mask.shape[1])
            self._mask = torch.cat([self._mask, extra], dim=1)
        return self._mask[:, :need]

    def advance(self, tokens: torch.Tensor, live: Optional[torch.Tensor] = None, *, lockstep: bool = True,
                text: bool = True) -> Optional[torch.Tensor]:
        """Feed one base token per row (``tokens [B]``); returns the base's logits after it.

        ``live``: rows still generating (text readers skip the others). ``lockstep=False`` leaves out the
        base and the guides that read its ids, ``text=False`` the guides that read text
        (:meth:`~mogen.decoding.runners.RunnerSet.step`).
        """
        self.produced += 1
        mask = self.mask()
        if self.base is not None and lockstep:
            self.base_logits = self.base.forward(tokens.unsqueeze(1), mask, self.next_pos)[:, -1]
        self.runners.step(tokens, mask, self.next_pos, live, lockstep=lockstep, text=text)
        self.next_pos = self.next_pos + 1
        return self.base_logits

    def reorder(self, index: Any) -> None:
        """Row ``r`` becomes old row ``index[r]`` (rows may repeat) in every registered holder."""
        index = torch.as_tensor(index, dtype=torch.long).to(self.device)
        for reorder in self._reorders:
            reorder(index)

    def _reorder_rows(self, index: torch.Tensor) -> None:
        if self.base_logits is not None:
            self.base_logits = self.base_logits.index_select(0, index)
        if self.next_pos is not None:
            self.next_pos = self.next_pos.index_select(0, index)
        if self._mask is not None:
            self._mask = self._mask.index_select(0, index)


def open_session(base: Any, input_ids: Any, attention_mask: Any, *, guides: Any, tokenizer: Any, weights: Any,
                 beta: Any, gamma: Any, max_new_tokens: Any, eos_token_id: TokenIds = None,
                 pad_token_id: Optional[int] = None,
                 special: Optional[tuple[Optional[torch.Tensor], Optional[int]]] = None) -> DecodingSession:
    """The checked set-up of a call that drives ``base`` itself (``generate``, ``search``).

    ``special``: ``(eos ids, pad id)`` already resolved (transformers' ``GenerationConfig`` did it); else they
    come from ``eos_token_id`` / ``pad_token_id`` and the base's generation config (:func:`special_ids`).

    Raises ValueError / TypeError as :func:`mogen.generate` documents.
    """
    check_base(base)
    device = output_device(base)
    ids, prompt_mask, padded = check_prompt(input_ids, attention_mask, device)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    vocab_size = base_vocab_size(base, tokenizer)
    guidance = bind_guides(guides, weights, batch=ids.shape[0], tokenizer=tokenizer, vocab_size=vocab_size,
                           device=device, beta=finite_number(beta, "beta"), gamma=finite_number(gamma, "gamma"))
    check_devices({"base": base, **guidance.models})
    longest = int(prompt_mask.sum(dim=1).max())
    check_context({"base": base, **guidance.lockstep_models}, longest, max_new_tokens)
    eos, pad = special_ids(base, eos_token_id, pad_token_id, device) if special is None else special
    return DecodingSession(guidance, ids, prompt_mask, padded=padded, max_new_tokens=max_new_tokens,
                           base=LMRunner(base, vocab_size, "base"), eos=eos, pad_token_id=pad,
                           vocab_size=vocab_size)
