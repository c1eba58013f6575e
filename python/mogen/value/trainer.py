"""Value models on ``transformers.Trainer``: MAGE eq. 16 as a ``compute_loss``, everything else Trainer's own.

:class:`ValueTrainer` trains a value model (:func:`~mogen.value_format.make_value_model`)
on rows ``(ids, n_prompt, target)`` (:mod:`mogen.value.targets`). Because it
is a plain ``Trainer``, ``torchrun`` / ``accelerate launch``, DDP, FSDP,
DeepSpeed, gradient accumulation, bf16, checkpoints, resume, logging and
evaluation work as for any Trainer job; ``TrainingArguments`` pass through.

**The loss of one optimizer step** is the mean over the step's ``N`` rows,
on every rank and every accumulated micro-batch together::

    L = 1/N * sum_rows L_row        (L_row: targets.row_losses)

Each micro-batch ``m`` on rank ``k`` backpropagates
``W * sum_{rows of m} L_row / N``, where ``N`` is counted over all the step's
micro-batches on all ``W`` ranks (:meth:`ValueTrainer.get_batch_samples`
gathers it). The accumulated gradients add up over micro-batches, and
data-parallel reduction (DDP, FSDP, DeepSpeed) *averages* over ranks, which
the factor ``W`` undoes, so every rank ends the step with the gradient of
``L``: the same whether the ``N`` rows were split over ranks, over
accumulation steps, or neither, and exact for a short last step. Trainer's
own division by the accumulation steps is off (``loss_is_scaled_for_ga``),
as is DeepSpeed's (Trainer passes ``scale_wrt_gas=False``). Evaluation
averages rows per batch. Data parallelism only: tensor, context or sequence
parallelism would count replicated rows more than once.

**Order**: the training rows of epoch ``e`` follow the ``e``-th
``torch.randperm`` of a generator seeded with ``shuffle_seed``, on every rank;
each rank takes its share of each step's batches (accelerate's batch
sharding). With one process and no accumulation this is the order
mogen's value training has always used (``seed + 1``).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..configs import ConfigError, key_path
from ..numerics import GRAD_CLIP_NORM
from .data import spearman
from .targets import batch_targets, last_positions, q_taken, row_losses

__all__ = ["ValueTrainer", "ValueRows", "RowCollator", "EpochShuffle", "spearman_metric", "training_arguments",
           "TRAINING_DEFAULTS"]

#: a training row: ``(ids, n_prompt, standardised reward)``
Row = tuple[list[int], int, float]


class ValueRows(torch.utils.data.Dataset):
    """Training rows as a map-style dataset; items are tuples (not dicts), so Trainer's column removal, which
    only touches dict features, leaves them alone."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Row:
        return self.rows[i]


class RowCollator:
    """Rows to ``{"input_ids" [B, T], "predict" [B, T - 1], "target" [B, 1]}`` (:func:`batch_targets`). No key
    is named ``labels``: Trainer would count tokens for a loss that averages rows."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Row]) -> dict:
        ids, predict, target = batch_targets(rows, self.pad_id)
        return {"input_ids": ids, "predict": predict, "target": target}


class EpochShuffle(torch.utils.data.Sampler):
    """Epoch ``e``'s order: the ``(e + 1)``-th ``randperm(n)`` drawn from ``Generator().manual_seed(seed)``;
    the same on every rank, and after a resume (accelerate calls :meth:`set_epoch`)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):  # the draws of the epochs before, so each epoch reshuffles
            torch.randperm(self.n, generator=gen)
        return iter(torch.randperm(self.n, generator=gen).tolist())


class _EpochLosses(TrainerCallback):
    """Appends the mean row loss of each finished epoch (over every rank) to ``trainer.epoch_losses``."""

    def __init__(self, trainer: "ValueTrainer") -> None:
        self.trainer = trainer

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        t = self.trainer
        total = t.accelerator.gather(t._epoch_sum).reshape(-1, 2).sum(0)  # every rank calls on_epoch_end
        t.epoch_losses.append(float(total[0] / total[1]) if total[1] > 0 else float("nan"))
        t._epoch_sum = torch.zeros(2, dtype=torch.float64, device=t.args.device)


class ValueTrainer(Trainer):
    """``Trainer`` whose loss is MAGE eq. 16 (module docstring); ``shuffle_seed`` orders the training rows.

    Build it with ``data_collator=RowCollator(pad_id)`` and :class:`ValueRows` datasets; ``epoch_losses`` holds the
    mean row loss of each epoch run; evaluation reports ``loss`` and ``spearman`` (:func:`spearman_metric`)."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the step's rows itself

    def __init__(self, *args: Any, shuffle_seed: int, **kwargs: Any) -> None:
        kwargs.setdefault("compute_metrics", spearman_metric)
        super().__init__(*args, **kwargs)
        self.shuffle_seed = shuffle_seed
        self.epoch_losses: list[float] = []
        self._epoch_sum = torch.zeros(2, dtype=torch.float64, device=self.args.device)  # (sum of L_row, rows)
        self.add_callback(_EpochLosses(self))

    def _get_train_sampler(self, train_dataset: Optional[Any] = None) -> torch.utils.data.Sampler:
        return EpochShuffle(len(train_dataset if train_dataset is not None else self.train_dataset),
                            self.shuffle_seed)

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int,
                          device: Any) -> tuple[list, torch.Tensor]:
        """The step's micro-batches and ``N``, the rows of the whole step on every rank (a ``[1]`` tensor)."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        rows = torch.tensor([sum(len(b["target"]) for b in batches)], dtype=torch.float32, device=device)
        return batches, self.accelerator.gather(rows).sum().reshape(1)

    def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Union[torch.Tensor, int, None] = None) -> Any:
        """``W * sum L_row / N`` in training (``N = num_items_in_batch``); the batch's mean ``L_row`` without N."""
        q = q_taken(model, inputs["input_ids"])
        per_row = row_losses(q, inputs["predict"], inputs["target"])
        if num_items_in_batch is None:
            loss = per_row.mean()
        else:
            n = torch.as_tensor(num_items_in_batch, device=per_row.device).reshape(())
            loss = per_row.sum() * self.accelerator.num_processes / n
        if model.training:
            self._epoch_sum += torch.stack([per_row.detach().sum().double(),
                                            torch.tensor(float(len(per_row)), dtype=torch.float64,
                                                         device=per_row.device)]).to(self._epoch_sum.device)
        return (loss, {"q": q}) if return_outputs else loss

    def prediction_step(self, model: Any, inputs: dict, prediction_loss_only: bool,
                        ignore_keys: Optional[list] = None) -> tuple:
        """``(mean L_row, Q at each row's last response token [B], target [B])``, both in standardised units."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            q = q_taken(model, inputs["input_ids"])
            loss = row_losses(q, inputs["predict"], inputs["target"]).mean()
        if prediction_loss_only:
            return loss, None, None
        final = q[torch.arange(len(q), device=q.device), last_positions(inputs["predict"])]
        return loss, final, inputs["target"][:, 0]


def spearman_metric(prediction: Any) -> dict:
    """``{"spearman": ...}``: Spearman's correlation of the final-token value with the reward (NaN for fewer
    than 2 rows); ``prediction`` is Trainer's ``EvalPrediction``."""
    final, target = prediction.predictions, prediction.label_ids
    if final is None or len(final) < 2:
        return {"spearman": float("nan")}
    return {"spearman": spearman([float(x) for x in final], [float(x) for x in target])}


#: mogen's choices where the user's TrainingArguments say nothing: the loop mogen's value training always ran
#: (AdamW without weight decay at a constant rate, gradients clipped at GRAD_CLIP_NORM), no checkpoints, no
#: reporting integrations, "target" as the label (so evaluation's predictions come with it), and DDP told that
#: every parameter takes part (it otherwise walks the graph each step looking for unused ones).
TRAINING_DEFAULTS = {"lr_scheduler_type": "constant", "weight_decay": 0.0, "max_grad_norm": GRAD_CLIP_NORM,
                     "optim": "adamw_torch", "save_strategy": "no", "report_to": "none", "logging_strategy": "epoch",
                     "label_names": ["target"], "ddp_find_unused_parameters": False}


def training_arguments(given: Union[TrainingArguments, dict, None], defaults: dict,
                       path: str = "training_args") -> TrainingArguments:
    """``given`` as it is when it is a ``TrainingArguments``; else ``TrainingArguments(**{TRAINING_DEFAULTS,
    defaults, given})``. A key it does not take, or a value it refuses, is a ConfigError at ``path.<key>``."""
    if isinstance(given, TrainingArguments):
        return given
    if given is not None and not isinstance(given, dict):
        raise ConfigError(path, f"expected a mapping of TrainingArguments or a TrainingArguments, got {given!r}")
    given = dict(given or {})
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in given:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(key_path(path, str(key)), f"is not a transformers.TrainingArguments field{hint}")
    try:
        # pinned memory only helps copies to a GPU (and warns without one)
        pin = {"dataloader_pin_memory": torch.cuda.is_available()}
        return TrainingArguments(**{**TRAINING_DEFAULTS, **pin, **defaults, **given})
    except (ValueError, TypeError) as exc:
        raise ConfigError(path, f"TrainingArguments refuses them: {' '.join(str(exc).split())}") from None
