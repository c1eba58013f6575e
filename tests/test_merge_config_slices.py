"""mergekit configs with slices, per-layer gradients and filters: mergekit's own example configs
(only the model names replaced by paths) against an independent per-tensor reference, against
``mergekit-yaml`` where mergekit is installed, and the one-line refusals."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mogen_ext
from mogen import cli, reference
from mogen.merging.settings import evaluate_setting
from merge_helpers import assert_matches_fp64, load_ckpt, np64, ordered, save_llama
from test_merge_cli import _mergekit_python

pytestmark = pytest.mark.skipif(not mogen_ext.has_cpu_kernels, reason=f"no compiled kernels: {mogen_ext.load_error}")

LAYERS = 40  # the examples' layer ranges are those of 13B Llamas
NAMES = {"base": "TheBloke/Llama-2-13B-fp16", "orca": "psmathur/orca_mini_v3_13b",
         "platypus": "garage-bAInd/Platypus2-13B", "wizard": "WizardLM/WizardMath-13B-V1.0"}

# mergekit's examples/gradient-slerp.yml
GRADIENT_SLERP = """\
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
"""

# the TIES example of mergekit's README
GRADIENT_TIES = """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""

# mergekit's examples/orcamini-platy-44layer.yml
PASSTHROUGH = """\
slices:
  - sources:
    - model: psmathur/orca_mini_v3_13b
      layer_range: [0, 24]
  - sources:
    - model: garage-bAInd/Platypus2-13B
      layer_range: [20, 40]
merge_method: passthrough
dtype: float16
"""

EXAMPLES = {"gradient_slerp": GRADIENT_SLERP, "gradient_ties": GRADIENT_TIES, "passthrough": PASSTHROUGH}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Four fp16 40-layer Llamas: a base and three fine-tunes of it (folder, tensors) by role."""
    root = tmp_path_factory.mktemp("llamas")
    base = save_llama(root / "base", 0, LAYERS, torch.float16)
    out = {"base": (root / "base", base)}
    for seed, role in enumerate(("orca", "platypus", "wizard"), start=1):
        out[role] = (root / role, save_llama(root / role, seed, LAYERS, torch.float16, related_to=base))
    return out


def write_example(tmp_path: Path, which: str, models) -> Path:
    text = EXAMPLES[which]
    for role, name in NAMES.items():
        text = text.replace(name, str(models[role][0]))
    path = tmp_path / f"{which}.yml"
    path.write_text(text)
    return path


def run_mogen(config: Path, out: Path, *extra) -> int:
    return cli.main(["merge", "--config", str(config), "--out", str(out), "--quiet", "--no-fsync", *extra])


def layer_t(name: str) -> float:
    """Position of a tensor's layer in [0, 1] (0 outside the layers)."""
    m = re.search(r"\.layers\.(\d+)\.", name)
    return 0.0 if m is None else int(m.group(1)) / (LAYERS - 1)


def interp(values, t: float) -> float:
    return float(np.interp(t, np.linspace(0.0, 1.0, len(values)), values))


def test_gradient_slerp_matches_reference(models, tmp_path):
    assert run_mogen(write_example(tmp_path, "gradient_slerp", models), tmp_path / "out") == 0
    got = load_ckpt(tmp_path / "out")
    a, b = models["orca"][1], models["platypus"][1]
    assert set(got) == set(a)
    for n, x in got.items():
        t = interp([0, 0.5, 0.3, 0.7, 1], layer_t(n)) if "self_attn" in n else \
            interp([1, 0.5, 0.7, 0.3, 0], layer_t(n)) if "mlp" in n else 0.5
        want = reference.merge_slerp(a[n], b[n], t)
        assert x.dtype == torch.float16
        assert_matches_fp64(x, np64(want), np.abs(np64(want)), n)


def test_gradient_ties_matches_reference(models, tmp_path):
    assert run_mogen(write_example(tmp_path, "gradient_ties", models), tmp_path / "out") == 0
    got = load_ckpt(tmp_path / "out")
    base = models["base"][1]
    xs = [models[r][1] for r in ("orca", "platypus", "wizard")]
    assert set(got) == set(base)
    for n, x in got.items():
        weights, density = ties_params(n)
        want = reference.merge_ties(base[n], [m[n] for m in xs], weights, density, normalize=True)
        assert_matches_fp64(x, np64(want), np.abs(np64(want)), n)


def test_passthrough_stacks_layer_ranges(models, tmp_path):
    assert run_mogen(write_example(tmp_path, "passthrough", models), tmp_path / "out") == 0
    got = load_ckpt(tmp_path / "out")
    a, b = models["orca"][1], models["platypus"][1]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 44
    want = {n: a[n] for n in ("model.embed_tokens.weight",)}
    want.update({n: b[n] for n in ("model.norm.weight", "lm_head.weight")})
    for j in range(44):
        src, i = (a, j) if j < 24 else (b, 20 + j - 24)
        for n in a:
            if n.startswith("model.layers.0."):
                want[n.replace(".0.", f".{j}.", 1)] = src[n.replace(".0.", f".{i}.", 1)]
    assert set(got) == set(want)
    for n, x in got.items():
        assert torch.equal(x, want[n]), n


def test_filter_falls_through_to_top_level(models, tmp_path):
    """A model's filtered weight that matches no entry takes the top-level weight (linear normalises)."""
    cfg = {"models": [{"model": str(models["orca"][0]), "parameters": {"weight": [{"filter": "mlp", "value": 3.0}]}},
                      {"model": str(models["platypus"][0])}],
           "merge_method": "linear", "parameters": {"weight": 1.0}, "dtype": "float32"}
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    assert run_mogen(tmp_path / "c.yml", tmp_path / "out") == 0
    got = load_ckpt(tmp_path / "out")
    a, b = models["orca"][1], models["platypus"][1]
    for n in ("model.layers.3.mlp.up_proj.weight", "model.layers.3.self_attn.q_proj.weight", "lm_head.weight"):
        wa = 0.75 if "mlp" in n else 0.5
        want = wa * np64(a[n]) + (1 - wa) * np64(b[n])
        assert_matches_fp64(got[n], want, np.abs(want), n)


@pytest.mark.parametrize("t", [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.74, 0.75, 0.9, 1.0] + [i / 39 for i in range(40)])
def test_gradient_interpolates_piecewise_linearly(t):
    v = [0.0, 0.5, 0.3, 0.7, 1.0]
    assert evaluate_setting(v, "x", t) == pytest.approx(interp(v, t), abs=1e-12)
    assert evaluate_setting(["a", "b", "c"], "x", t) == ["a", "b", "c"][int(t * 2)]


def test_filters_pick_the_first_match():
    s = [{"filter": "mlp", "value": [0.0, 1.0]}, {"filter": "*", "value": 7}]
    assert evaluate_setting(s, "model.layers.1.mlp.up_proj.weight", 0.25) == pytest.approx(0.25)
    assert evaluate_setting(s, "model.norm.weight", 0.25) == 7
    assert evaluate_setting([{"filter": "mlp", "value": 1}], "lm_head.weight", 0.0) is None


@pytest.mark.parametrize("change, key", [
    (lambda c: c.update(tokenizer_source="union"), "tokenizer_source"),
    (lambda c: c["slices"][0].update(residual_weight=0.5), "slices[0].residual_weight"),
    (lambda c: c.update(merge_method="nuslerp"), "merge_method"),
    (lambda c: c["slices"][1]["sources"][0].update(layer_range=[20, 41]), "slices[1].sources[0].layer_range"),
    (lambda c: c["slices"][0]["sources"][0].update(parameters={"t": [1, 2]}), "slices[0].sources[0].parameters.t"),
])
def test_unsupported_key_is_one_line_and_writes_nothing(models, tmp_path, capsys, change, key):
    cfg = yaml.safe_load(write_example(tmp_path, "passthrough", models).read_text())
    change(cfg)
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(cfg))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_mogen(tmp_path / "bad.yml", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mogen merge: error: ") and key in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary folder
    with pytest.raises(ValueError, match=re.escape(key)):
        run_mogen(tmp_path / "bad.yml", tmp_path / "out", "--debug")


def _ulp16(scale: torch.Tensor) -> torch.Tensor:
    """The fp16 ulp at each magnitude (subnormals: the smallest normal's)."""
    return torch.exp2(torch.floor(torch.log2(scale.clamp_min(2.0 ** -14))) - 10)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.dtype == b.dtype == torch.float16
    return int((ordered(a) - ordered(b)).abs().max().item()) if a.numel() else 0


def ties_params(name: str) -> tuple[list, list]:
    """The README TIES example's weights and densities for one tensor, by independent interpolation."""
    t = layer_t(name)
    return ([1.0, interp([0, 0.3, 0.7, 1], t), 0.5 if "mlp" in name else 0.0],
            [interp([1, 0.7, 0.1], t), 0.5, 0.33])


def ties_unexplained(name: str, mine: torch.Tensor, theirs: torch.Tensor, base: torch.Tensor,
                     xs: list) -> tuple[int, int]:
    """Elements where mogen and mergekit differ by more than fp16 arithmetic on the inputs explains.

    mergekit computes TIES in the config's dtype (float16), so each of its results may be off by a
    few ulp of the inputs' magnitude; and where several deltas tie in magnitude at a source's trim
    threshold, or the weighted deltas nearly cancel so that fp16 rounding elects the other sign,
    both choices are valid TIES. Returns (elements off by more than rounding, those of them that
    neither explains)."""
    weights, density = ties_params(name)
    scale = torch.stack([base.float().abs()] + [x.float().abs() for x in xs]).amax(0)
    slack = 8 * _ulp16(scale)
    explained = (mine.float() - theirs.float()).abs() <= slack
    beyond = int((~explained).sum())
    total = torch.zeros_like(scale, dtype=torch.float64)
    for x, w, d in zip(xs, weights, density):
        delta16 = (x - base).abs().float()  # fp16 arithmetic, as mergekit's
        kept = torch.ones_like(explained)
        k = int(d * delta16.numel())
        if d < 1.0 and 0 < k < delta16.numel():
            thr = torch.sort(delta16.reshape(-1), descending=True).values[k - 1]
            kept = delta16 >= thr
            if w != 0.0:
                explained |= delta16 == thr
        total += w * (x.double() - base.double()) * kept
    explained |= total.abs() <= slack
    return beyond, int((~explained).sum())


@pytest.mark.slow
@pytest.mark.parametrize("which", list(EXAMPLES))
def test_agrees_with_mergekit_on_its_examples(models, tmp_path, which):
    py = _mergekit_python()
    if py is None:
        pytest.skip("mergekit is not installed (make mergekit creates .venv-mergekit; or set MOGEN_MERGEKIT_PYTHON)")
    config = write_example(tmp_path, which, models)
    r = subprocess.run([str(Path(py).parent / "mergekit-yaml"), str(config), str(tmp_path / "mk"), "--quiet"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert run_mogen(config, tmp_path / "mine") == 0
    theirs, mine = load_ckpt(tmp_path / "mk"), load_ckpt(tmp_path / "mine")
    assert set(mine) == set(theirs)
    worst = max(_ulps(mine[n], t) for n, t in theirs.items())
    print(f"{which}: at most {worst} fp16 ulp from mergekit")
    if which == "gradient_ties":  # mergekit computes in fp16 (the config's dtype); mogen in fp32
        xs = [models[r][1] for r in ("orca", "platypus", "wizard")]
        bad = {n: ties_unexplained(n, mine[n], t, models["base"][1][n], [x[n] for x in xs])
               for n, t in theirs.items()}
        off = sum(b for b, _ in bad.values())
        print(f"{which}: {off} of {sum(t.numel() for t in theirs.values())} elements beyond fp16 rounding of the "
              "inputs, each a trim-threshold tie or a near-cancelling sign election")
        assert not any(u for _, u in bad.values()), {n: u for n, (_, u) in bad.items() if u}
    else:
        assert worst <= 1, f"{which}: {worst} ulp from mergekit"
    layers = json.loads((tmp_path / "mk" / "config.json").read_text())["num_hidden_layers"]
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["num_hidden_layers"] == layers
