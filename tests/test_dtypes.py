"""mogen.dtypes: one table of dtype facts, read by the CLI, the sweep config, the loaders and the merge engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mogen import dtypes
from mogen.decoding.loading import parse_dtype as decode_dtype
from mogen.evaluation.methods import SweepModels
from mogen.merging.io import parse_dtype as merge_dtype

from tiny_models import tiny_llama


@pytest.mark.parametrize("names,td,code,size", [
    (["float32", "fp32", "FP32", "F32", "float", "torch.float32", torch.float32], torch.float32, "F32", 4),
    (["bfloat16", "bf16", "BF16", " bf16 ", "torch.bfloat16", torch.bfloat16], torch.bfloat16, "BF16", 2),
    (["float16", "fp16", "F16", "half", torch.float16], torch.float16, "F16", 2),
])
def test_every_name_of_a_float_dtype(names, td, code, size):
    for name in names:
        assert dtypes.torch_dtype(name) == td
        assert dtypes.safetensors_code(name) == code
        assert dtypes.itemsize(name) == size
        assert decode_dtype(name) == td
        assert merge_dtype(name) == code


def test_table_facts():
    assert dtypes.FLOAT_CODES == ("F32", "BF16", "F16")
    assert dtypes.SHORT_FLOAT_NAMES == ("fp32", "bf16", "fp16")
    assert dtypes.itemsize("F8_E4M3") == 1 and dtypes.itemsize("I64") == 8 and dtypes.itemsize("C64") == 8
    assert dtypes.config_name("BF16") == "bfloat16"
    assert dtypes.torch_dtype("I8", allowed=None) == torch.int8
    for d in dtypes.DTYPES:
        if d.torch is not None:
            assert d.torch.itemsize == d.itemsize and str(d.torch) == f"torch.{d.name}"


@pytest.mark.parametrize("bad", ["int8", "bogus", "", 3, None])
def test_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match=r"--dtype must be one of \['float32', 'bfloat16', 'float16'\]"):
        dtypes.torch_dtype(bad, what="--dtype")
    with pytest.raises(ValueError, match="U32 has no torch dtype|uint32 has no torch dtype"):
        dtypes.torch_dtype("U32", allowed=None)


def test_sweep_models_dtype_accepts_aliases(tmp_path):
    # `dtype: bf16` in a sweep config used to fail with AttributeError (getattr(torch, "bf16")).
    tiny_llama(16, 0).save_pretrained(tmp_path / "m")
    model = SweepModels(SimpleNamespace(models={"dtype": "bf16"})).load(tmp_path / "m")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="sweep config: models.dtype must be one of"):
        SweepModels(SimpleNamespace(models={"dtype": "int4"})).load(tmp_path / "m")
