"""Reward models: sequence-classification checkpoints as rewards for sweeps and value training.

A reward model is what users have: a ``transformers`` folder whose ``config.json``
names a ``...ForSequenceClassification`` architecture, with its tokenizer beside
it. As a reward entry (sweep config ``rewards[i]``,
``train_value_model(reward=...)``)::

    {model: rm_folder, label: 0, batch_size: 16, max_length: 512, template: "{prompt}{response}",
     offset: 0.0, scale: 1.0, name: helpful}

Each (prompt, response) is rendered by ``template``: a ``str.format`` text with
the fields ``{prompt}`` and ``{response}`` (literal braces doubled), tokenised
with the tokenizer's special tokens; or ``"chat"``: the tokenizer's chat
template applied to ``[user: prompt, assistant: response]``, whose text is
tokenised without adding special tokens again (a tokenizer without a chat
template is refused). The ids are cut to ``max_length`` tokens (on the
tokenizer's truncation side, the right by default), right-padded with the
model's pad id in batches of ``batch_size`` (shortest texts together), and
scored under ``torch.inference_mode``. The raw reward is logit ``label`` of the
model's output, which the model pools at its last non-pad token (its own
rule); ``offset`` and ``scale`` (:mod:`mogen.evaluation.rewards`) apply after.

:func:`check_reward_model` reads only ``config.json`` and the tokenizer, so a
sweep config refuses a missing folder, a checkpoint that is not a sequence
classifier (a causal LM folder) and a label outside ``0 .. num_labels - 1``
before anything is decoded; each error names the config file and the key path.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..configs import ConfigError, checked_field, check_positive, key_path

__all__ = ["RewardModel", "RewardModelEntry", "check_reward_model", "check_template", "DEFAULT_TEMPLATE",
           "CHAT_TEMPLATE"]

#: The template of a reward entry that gives none: the prompt and the response, joined as they were decoded.
DEFAULT_TEMPLATE = "{prompt}{response}"
#: The template value that renders through the reward model tokenizer's chat template.
CHAT_TEMPLATE = "chat"


def check_finite(value: Any, path: str) -> None:
    """A field check: a finite number."""
    if value is not None and not (float("-inf") < value < float("inf")):
        raise ConfigError(path, f"must be a finite number, got {value!r}")


def check_scale(value: Any, path: str) -> None:
    """A field check: a finite number other than 0."""
    check_finite(value, path)
    if value == 0:
        raise ConfigError(path, "must not be 0 (reward = (raw - offset) * scale)")


@dataclass
class RewardModelEntry:
    """A reward entry naming a sequence-classification checkpoint (the module docstring's keys)."""

    model: str
    label: int = 0
    batch_size: int = checked_field(check_positive, 16)
    max_length: int = checked_field(check_positive, 512)
    template: str = DEFAULT_TEMPLATE
    offset: float = checked_field(check_finite, 0.0)
    scale: float = checked_field(check_scale, 1.0)
    name: Optional[str] = None


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def check_template(template: str, folder: Path, path: str, tokenizer: Any = None) -> None:
    """``template`` is ``"chat"`` (and the tokenizer of ``folder`` has a chat template) or a text with the
    fields ``{prompt}`` / ``{response}`` and no others; ConfigError at ``path`` otherwise."""
    if template == CHAT_TEMPLATE:
        tok = tokenizer if tokenizer is not None else _tokenizer(folder)
        if getattr(tok, "chat_template", None) is None:
            raise ConfigError(path, f"template 'chat' needs the reward model's chat template, and the tokenizer in "
                                    f"{str(folder)!r} has none; give a text template such as {DEFAULT_TEMPLATE!r}")
        return
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        template.format(prompt="", response="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(path, f"must be 'chat' or a text with {{prompt}} and {{response}} (literal braces "
                                f"doubled); {template!r} fails: {exc!r}") from None
    if "response" not in fields:
        raise ConfigError(path, f"must be 'chat' or a text with {{response}} in it, got {template!r}")


def check_reward_model(folder: Union[str, Path], label: int, template: str = DEFAULT_TEMPLATE,
                       path: str = "") -> Any:
    """Checks that ``folder`` is a sequence classifier with logit ``label`` and a tokenizer that can render
    ``template`` (reading ``config.json`` and the tokenizer only); returns the model's config. Each failure
    is a :class:`~mogen.configs.ConfigError` at ``path.model``, ``path.label`` or ``path.template``."""
    from transformers import AutoConfig

    from ..decoding.loading import has_tokenizer

    folder = Path(folder).expanduser()
    where = key_path(path, "model")
    if not folder.is_dir():
        raise ConfigError(where, f"reward model folder {str(folder)!r} does not exist (mogen loads local folders only)")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(where, f"{str(folder)!r} is not a transformers model folder: {exc}") from None
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        held = ", ".join(archs) if archs else "a model whose config.json names no architecture"
        raise ConfigError(where, f"{str(folder)!r} holds {held}, not a sequence classifier: a reward model is a "
                                 "...ForSequenceClassification checkpoint (one logit per label)")
    n = int(config.num_labels)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
        raise ConfigError(key_path(path, "label"), f"label {label!r} is out of range: {str(folder)!r} has "
                                                   f"num_labels {n} (labels 0 to {n - 1})")
    if not has_tokenizer(folder):
        raise ConfigError(where, f"{str(folder)!r} has no tokenizer files (tokenizer.json, tokenizer_config.json): "
                                 "a reward model is scored with its own tokenizer")
    check_template(template, folder, key_path(path, "template"))
    return config


class RewardModel:
    """A sequence-classification reward model (the module docstring's rules), loaded once.

    ``score(prompts, responses)`` gives the raw reward of every pair, in order;
    ``reward_model(prompt, response)`` scores one pair (so a ``RewardModel`` is
    also a ``reward(prompt, response) -> float``). ``device`` and ``dtype``
    place the model (``dtype`` None: ``transformers``' default). Errors as
    :func:`check_reward_model` (a ConfigError at ``what``'s key path).
    """

    def __init__(self, folder: Union[str, Path], *, label: int = 0, batch_size: int = 16, max_length: int = 512,
                 template: str = DEFAULT_TEMPLATE, device: Any = "cpu", dtype: Optional[torch.dtype] = None,
                 name: Optional[str] = None, what: str = "") -> None:
        from transformers import AutoModelForSequenceClassification

        from ..decoding.loading import quiet_transformers

        self.folder = Path(folder).expanduser()
        for key, value in (("batch_size", batch_size), ("max_length", max_length)):
            check_positive(value, key_path(what, key))
        check_reward_model(self.folder, label, template, what)
        quiet_transformers()
        self.label, self.max_length, self.template = label, max_length, template
        self.name = name or self.folder.name
        self.tokenizer = _tokenizer(self.folder)
        kwargs: dict = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        self.model = AutoModelForSequenceClassification.from_pretrained(self.folder, **kwargs).to(device).eval()
        pad = self.model.config.pad_token_id
        if pad is None:
            tok = self.tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        # The model pools at its last token that is not config.pad_token_id: the batch is padded with that id.
        # With no pad id anywhere a batch cannot be padded, so every text goes alone.
        self.pad_id = pad
        self.batch_size = batch_size if pad is not None else 1
        if pad is not None:
            self.model.config.pad_token_id = pad

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompt: str, response: str) -> list[int]:
        """The ids the model reads for one pair (rendered by the template, cut to ``max_length``)."""
        tok = self.tokenizer
        if self.template == CHAT_TEMPLATE:
            text = tok.apply_chat_template([{"role": "user", "content": prompt},
                                            {"role": "assistant", "content": response}], tokenize=False)
            ids = tok(text, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]
        else:
            text = self.template.format(prompt=prompt, response=response)
            ids = tok(text, truncation=True, max_length=self.max_length)["input_ids"]
        if not ids:
            raise ValueError(f"reward model {self.name}: (prompt={prompt!r}, response={response!r}) encodes to no "
                             "tokens")
        return list(ids)

    def score(self, prompts: Sequence[str], responses: Sequence[str], *, progress: bool = False,
              bar: Any = None) -> list[float]:
        """The raw reward (logit ``label``) of every ``(prompt, response)``, in order; ``bar``: a tqdm bar to
        advance (else one of its own when ``progress``)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = [0.0] * len(encoded)
        own = bar is None
        if own:
            bar = tqdm(total=len(encoded), desc=f"reward {self.name}", disable=not progress, leave=False)
        device = self.device
        pad = self.pad_id if self.pad_id is not None else 0
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    rows = order[start : start + self.batch_size]
                    width = max(len(encoded[i]) for i in rows)
                    ids = torch.full((len(rows), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(rows), width), dtype=torch.long)
                    for b, i in enumerate(rows):
                        ids[b, : len(encoded[i])] = torch.tensor(encoded[i])
                        mask[b, : len(encoded[i])] = 1
                    logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    for i, value in zip(rows, logits[:, self.label].float().cpu().tolist()):
                        out[i] = value
                    bar.update(len(rows))
        finally:
            if own:
                bar.close()
        return out

    def __call__(self, prompt: str, response: str) -> float:
        return self.score([prompt], [response])[0]
