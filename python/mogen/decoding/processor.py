"""The fusion as a ``transformers`` logits processor.

For users who keep ``base.generate(..., logits_processor=[processor])``: the
processor replaces the base's scores by the fused score of docs/design.md section 1,

    s(v) = log_softmax(scores)(v) + beta * sum_i w_i * (log p_ei(v) - log p_ri(v)),

running each guide's expert and reference with their own KV caches. Guides
with their own tokenizer read the text of the ids it is called with (pass the
base's ``tokenizer``), as in :func:`mogen.generate`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .binding import bind_guides
from .checks import finite_number
from .guides import shares_tokenizer
from .session import DecodingSession
from .weights import as_guide_list, resolve_weights

try:
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover - transformers is a dependency
    LogitsProcessor = object  # type: ignore[assignment,misc]

__all__ = ["MultiObjectiveLogitsProcessor"]


class MultiObjectiveLogitsProcessor(LogitsProcessor):
    """Weighted guides inside ``transformers``' ``generate``.

    Args:
        guides: :class:`mogen.ProxyGuide` / :class:`mogen.ValueGuide` or a list.
        weights: ``[M]`` or ``[B, M]`` (per row); default the guides' weights.
        beta: scale of the proxy guides' log-ratios.
        gamma: scale of the value guides' ``Q``.
        tokenizer: the base's tokenizer; required when a guide has its own
            (the fused scores then cover its ``len(tokenizer)`` ids, padded
            LM-head rows get ``-inf``).
        pad_token_id: with left-padded prompts, the pad id, so the guides mask
            the leading padding the same way the base does. Alternatively
            call :meth:`set_attention_mask` before ``generate``.

    The guides' caches live between calls of one generation. A call whose rows
    extend the previous call's rows by one column, in order or reordered and
    duplicated (beam search, ``num_return_sequences``), continues it: the
    caches follow the rows by index. Any other call starts a new generation
    (prefill); :meth:`reset` forces that. With a value guide in
    top-k mode every token outside its candidates scores ``-inf``.
    """

    def __init__(
        self,
        guides: Any,
        weights: Any = None,
        beta: float = 1.0,
        *,
        gamma: float = 1.0,
        tokenizer: Any = None,
        pad_token_id: Optional[int] = None,
    ) -> None:
        self.guides = as_guide_list(guides)
        for i, g in enumerate(self.guides):
            if tokenizer is None and not shares_tokenizer(tokenizer, g.tokenizer):
                raise ValueError(
                    f"guides[{i}] has its own tokenizer: pass MultiObjectiveLogitsProcessor(..., tokenizer=<the base "
                    "model's tokenizer>) so the guide can read the generated text"
                )
        self._reads_text = any(not shares_tokenizer(tokenizer, g.tokenizer) for g in self.guides)
        self.beta = finite_number(beta, "beta")
        self.gamma = finite_number(gamma, "gamma")
        self._weights_cpu, _ = resolve_weights(weights, self.guides, None)
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self._explicit_mask: Optional[torch.Tensor] = None
        self.reset()

    def reset(self) -> None:
        """Forget the current generation; the next call prefills the guides."""
        self._prev_ids: Optional[torch.Tensor] = None
        self._session: Optional[DecodingSession] = None

    def set_attention_mask(self, attention_mask: Optional[torch.Tensor]) -> None:
        """The ``[B, T]`` prompt mask of the next generation (left padding)."""
        self._explicit_mask = attention_mask
        self.reset()

    def _continues(self, input_ids: torch.Tensor) -> bool:
        prev = self._prev_ids
        return (
            prev is not None
            and input_ids.shape[0] == prev.shape[0]
            and input_ids.shape[1] == prev.shape[1] + 1
            and torch.equal(input_ids[:, :-1], prev)
        )

    def _reordered(self, input_ids: torch.Tensor) -> Optional[torch.Tensor]:
        """The index of each row's previous row when ``input_ids`` are the previous call's rows, reordered or
        duplicated (beam search, ``num_return_sequences``), plus one column; else None."""
        prev = self._prev_ids
        if prev is None or input_ids.shape[1] != prev.shape[1] + 1:
            return None
        where = {tuple(row): i for i, row in enumerate(prev.tolist())}
        index = [where.get(tuple(row)) for row in input_ids[:, :-1].tolist()]
        if any(i is None for i in index):
            return None
        return torch.tensor(index, dtype=torch.long, device=input_ids.device)

    def _prompt_mask(self, input_ids: torch.Tensor) -> Optional[torch.Tensor]:
        m = self._explicit_mask
        if m is not None:
            if tuple(m.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"the attention mask given to set_attention_mask has shape {tuple(m.shape)} but the prompt "
                    f"is {tuple(input_ids.shape)}"
                )
            m = m.to(input_ids.device, torch.long)
        elif self.pad_token_id is not None:
            # Only *leading* pads are padding: a pad id inside the text is text.
            m = ((input_ids != self.pad_token_id).long().cumsum(-1) > 0).long()
        if m is None or bool((m == 1).all()):
            return None
        return m

    def _prefill(self, input_ids: torch.Tensor, vocab: int) -> None:
        batch = input_ids.shape[0]
        w = self._weights_cpu
        if w.dim() == 2 and w.shape[0] != batch:
            raise ValueError(
                f"weights are per row for {w.shape[0]} rows but generate runs {batch} rows "
                "(num_return_sequences and beam search multiply rows; give weights for every row)"
            )
        guidance = bind_guides(self.guides, w, batch=batch, tokenizer=self.tokenizer, vocab_size=vocab,
                               device=input_ids.device, beta=self.beta, gamma=self.gamma, strict_width=False)
        mask = self._prompt_mask(input_ids)
        padded = mask is not None
        self._session = DecodingSession(guidance, input_ids, mask if padded else torch.ones_like(input_ids),
                                        padded=padded, vocab_size=vocab)
        self._session.register(self._reorder_rows)
        self._session.prefill()

    def _reorder_rows(self, index: torch.Tensor) -> None:
        assert self._prev_ids is not None
        self._prev_ids = self._prev_ids[index]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Fused scores ``[B, V]`` (float32, log-probability scale) for ``scores [B, V]``."""
        width = scores.shape[-1]
        # Guides reading text score the tokenizer's ids; rows of a padded LM head have no text.
        vocab = min(width, len(self.tokenizer)) if self._reads_text else width
        index = None if self._continues(input_ids) or self._session is None else self._reordered(input_ids)
        if index is not None:  # beams were selected: follow them by index instead of prefilling again
            assert self._session is not None
            self._session.reorder(index)
        if self._continues(input_ids) and self._session is not None:
            self._session.advance(input_ids[:, -1])
        else:
            self._prefill(input_ids, vocab)
        self._prev_ids = input_ids
        assert self._session is not None
        fusion = self._session.fusion
        if fusion.empty:
            return torch.log_softmax(scores.float(), dim=-1)
        if vocab == width:
            return fusion.step(scores).full()
        fused = torch.full(scores.shape, float("-inf"), dtype=torch.float32, device=scores.device)
        fused[:, :vocab] = fusion.step(scores[:, :vocab]).full()
        return fused
