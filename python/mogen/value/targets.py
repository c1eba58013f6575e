"""The targets and the loss of value training (MAGE eq. 16), in one place for every trainer.

A training row is ``(ids, n_prompt, target)``: the ids of prompt + response
(the eos appended when the response ended, :func:`~mogen.value.data.encode_example`),
where the response starts, and the standardised reward ``(r - offset) / scale``.
For each row the loss is::

    L_row = 1/2 * mean_{t in response} (Q(x, y<t)[y_t] - target)^2

over every response token ``y_t``, the eos included, no prompt token and no
padding. How rows are averaged into a batch's loss is the trainer's business
(:mod:`mogen.value.trainer`): the mean over the rows of one optimizer step.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["batch_targets", "q_taken", "row_losses", "last_positions"]


def batch_targets(rows: Sequence[tuple[list[int], int, float]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """One training batch from ``(ids, n_prompt, target)`` rows (:func:`~mogen.value.data.encode_example`).

    Returns ``ids [B, T]`` (right-padded with ``pad_id``), ``predict [B, T - 1]``
    and ``target [B, 1]``: ``predict[b, t]`` is True where position ``t``'s
    output is scored at token ``t + 1``, which is every response token (the eos
    included) and no prompt token or padding.
    """
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    predict = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    target = torch.zeros(len(rows), 1)
    for b, (row, n_prompt, r) in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        predict[b, n_prompt - 1 : len(row) - 1] = True
        target[b, 0] = r
    return ids, predict, target


def q_taken(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """``Q(x, y<t)[y_t]`` for every position ``t >= 1``: ``[B, T - 1]`` in float32 (right padding needs no mask:
    attention is causal, so a pad never reaches an earlier position)."""
    values = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return values.gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2)


def row_losses(q: torch.Tensor, predict: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]``: ``1/2 * mean over predict[b] of (q[b, t] - target[b])^2`` (``q``, ``predict`` ``[B, T - 1]``,
    ``target`` ``[B, 1]``); a row with no response token (never made by ``batch_targets``) gives 0."""
    err = (q - target.to(q.dtype)).masked_fill(~predict, 0.0)
    return 0.5 * (err ** 2).sum(1) / predict.sum(1).clamp(min=1).to(q.dtype)


def last_positions(predict: torch.Tensor) -> torch.Tensor:
    """``[B]``: the last response position of each row of ``predict [B, T - 1]`` (where the final token is
    valued)."""
    return predict.long().cumsum(1).argmax(1)
