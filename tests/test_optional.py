"""mogen._optional: every missing optional package is reported alike (feature, package, extra)."""

import sys

import pytest

from mogen._optional import MissingDependency, require


def test_require_returns_the_module():
    import json

    assert require("json", "data", "reading JSON") is json


def test_a_missing_package_names_the_purpose_package_and_extra(monkeypatch):
    for name in ("pyarrow", "pyarrow.parquet"):  # (another test may have imported them) importing raises
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError) as info:  # an ImportError, so callers that catch one still do
        require("pyarrow.parquet", "train", "format parquet", instead="use format jsonl")
    assert isinstance(info.value, MissingDependency) and info.value.name == "pyarrow"
    assert str(info.value).startswith("format parquet needs the `pyarrow` package, in mogen's `train` extra: "
                                      "pip install 'mogen[train]'; or use format jsonl (")
