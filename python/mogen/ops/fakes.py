"""Fake (meta) kernels of the compiled ops: their output shapes and dtypes for
tracing (torch.compile, opcheck, FakeTensorMode).

:mod:`mogen.ops` registers them, as the module csrc/library.cpp names in
``set_python_module``. The wrappers check arguments before tracing reaches these.
"""

from __future__ import annotations

import torch


def _check_devices(anchor_name: str, anchor: torch.Tensor, named: dict) -> None:
    # Mixed devices (say CPU and meta) would dispatch to these fakes rather than to a
    # kernel, so they repeat the kernels' device check.
    for name, t in named.items():
        if t is not None and t.device != anchor.device:
            raise ValueError(f"mogen: {name} is on {t.device} but {anchor_name} is on {anchor.device}")


def _k1_fake_checks(base, experts, refs, maps, weights) -> None:
    named = {"weights": weights}
    for i, (e, r, m) in enumerate(zip(experts, refs, maps)):
        named.update({f"expert_logits[{i}]": e, f"ref_logits[{i}]": r, f"vocab_maps[{i}]": m})
    _check_devices("base_logits", base, named)


def fused_log_ratio(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped):
    _k1_fake_checks(base, experts, refs, maps, weights)
    return base.new_empty(base.shape, dtype=torch.float32)


def fused_log_ratio_topk(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped, k):
    _k1_fake_checks(base, experts, refs, maps, weights)
    torch._check(1 <= k <= base.shape[1], lambda: f"k must be in [1, V_b] = [1, {base.shape[1]}], got {k}")
    shape = (base.shape[0], k)
    return base.new_empty(shape, dtype=torch.float32), base.new_empty(shape, dtype=torch.int64)


def fused_log_ratio_argmax(base, experts, refs, maps, weights, inv_temps, beta, base_inv_temp, unmapped):
    _k1_fake_checks(base, experts, refs, maps, weights)
    shape = (base.shape[0],)
    return base.new_empty(shape, dtype=torch.float32), base.new_empty(shape, dtype=torch.int64)


def topk_value_scores(hidden, weight, ids, bias):
    _check_devices("hidden", hidden, {"weight": weight, "ids": ids, "bias": bias})
    return hidden.new_empty((hidden.shape[0], ids.shape[1]), dtype=torch.float32)


# op name in the mogen namespace -> its fake kernel
FAKES = {
    "fused_log_ratio": fused_log_ratio,
    "fused_log_ratio_topk": fused_log_ratio_topk,
    "fused_log_ratio_argmax": fused_log_ratio_argmax,
    "topk_value_scores": topk_value_scores,
}
