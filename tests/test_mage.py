"""mogen.MAGE: Stage-1 Bone Soup base per preference, Stage-2 guides, in-place re-merges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mogen
from mogen.mage import MAGE

from tiny_models import metaspace_tokenizer, pad_rows, tiny_llama, value_llama


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("mage")
    tok = metaspace_tokenizer()
    v = len(tok)
    out = {"tok": tok}
    for name, model in [("bb0", tiny_llama(v, 1)), ("bb1", tiny_llama(v, 2)), ("sft", tiny_llama(v, 3)),
                        ("v0", value_llama(v, 4)), ("v1", value_llama(v, 5)),
                        ("e0", tiny_llama(v, 6)), ("e1", tiny_llama(v, 7)), ("ref", tiny_llama(v, 8))]:
        model.save_pretrained(root / name)
        out[name] = root / name
    return out


def _prompts(tok):
    return pad_rows([tok("the quiet river", add_special_tokens=False)["input_ids"],
                     tok("a busy street", add_special_tokens=False)["input_ids"]], pad_id=tok.pad_token_id)


def test_one_hot_e_m_is_that_value_model_on_the_stage1_merge(folders, tmp_path):
    tok = folders["tok"]
    ids, mask = _prompts(tok)
    mage = MAGE([folders["bb0"], folders["bb1"]], tokenizer=tok, variant="E-M", bone_beta=0.8,
                value_models=[folders["v0"], folders["v1"]], gamma=2.0)
    out = mage.generate(ids, mask, preference=[0.0, 1.0], max_new_tokens=10)
    lam, _ = mogen.bone_soup_coefficients([0.0, 1.0], 0.8)
    mogen.merge([folders["bb0"], folders["bb1"]], [float(x) for x in lam], tmp_path / "base", progress=False)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    value = AutoModelForCausalLM.from_pretrained(folders["v1"]).eval()
    expected = mogen.generate(base, ids, mask, guides=[mogen.ValueGuide(value)], tokenizer=tok, gamma=2.0,
                              max_new_tokens=10)
    assert torch.equal(out, expected)
    plain = mogen.generate(base, ids, mask, guides=None, tokenizer=tok, max_new_tokens=10)
    assert not torch.equal(out, plain)  # the guide steers


@pytest.mark.parametrize("variant", ["E", "E-M", "I", "I-M", "I-M-linear", "none"])
def test_two_preferences_in_one_batch_equal_each_alone(folders, variant):
    tok = folders["tok"]
    ids, mask = _prompts(tok)
    kwargs = dict(value_models=[folders["v0"], folders["v1"]]) if variant.startswith("E") else \
        dict(experts=[folders["e0"], folders["e1"]], reference=folders["ref"]) if variant.startswith("I") else {}
    mage = MAGE([folders["bb0"], folders["bb1"]], tokenizer=tok, variant=variant, alpha=0.2, sft=folders["sft"],
                **kwargs)
    prefs = [[0.7, 0.3], [0.2, 0.8]]
    both = mage.generate(ids, mask, preference=prefs, max_new_tokens=8)
    for b in range(2):
        alone = mage.generate(ids[b : b + 1, mask[b].argmax():], preference=prefs[b], max_new_tokens=8)
        row = both[b][mask[b].argmax():]
        assert torch.equal(row[: alone.shape[1]], alone[0])


def test_remerges_only_when_the_preference_changes(folders):
    tok = folders["tok"]
    ids, mask = _prompts(tok)
    mage = MAGE([folders["bb0"], folders["bb1"]], tokenizer=tok, variant="E-M",
                value_models=[folders["v0"], folders["v1"]])
    mage.generate(ids, mask, preference=[0.5, 0.5], max_new_tokens=2)
    assert [m.model for m in mage.merges] == ["base", "guide"]
    mage.generate(ids, mask, preference=[0.5, 0.5], max_new_tokens=2)
    assert len(mage.merges) == 2  # same preference: no merge
    mage.generate(ids, mask, preference=[[0.1, 0.9], [0.5, 0.5]], max_new_tokens=2)
    assert [m.model for m in mage.merges[2:]] == ["base", "guide", "base", "guide"]
    assert all(m.seconds > 0 for m in mage.merges)


def test_errors(folders, tmp_path):
    tok = folders["tok"]
    bb = [folders["bb0"], folders["bb1"]]
    with pytest.raises(ValueError, match="variant must be one of"):
        MAGE(bb, tokenizer=tok, variant="X")
    with pytest.raises(ValueError, match="needs value_models"):
        MAGE(bb, tokenizer=tok, variant="E")
    with pytest.raises(ValueError, match="needs reference"):
        MAGE(bb, tokenizer=tok, variant="I", experts=[folders["e0"], folders["e1"]])
    with pytest.raises(ValueError, match="not a mogen value model"):
        MAGE(bb, tokenizer=tok, variant="E", value_models=[folders["e0"], folders["e1"]])
    mage = MAGE(bb, tokenizer=tok, variant="none")
    ids, mask = _prompts(tok)
    with pytest.raises(ValueError, match="not on the simplex"):
        mage.generate(ids, mask, preference=[0.7, 0.7])
    with pytest.raises(ValueError, match=r"\[n\] = \[2\]"):
        mage.generate(ids, mask, preference=[0.2, 0.3, 0.5])
    tiny_llama(len(tok), 9, hidden=48).save_pretrained(tmp_path / "odd")
    odd = MAGE([folders["bb0"], tmp_path / "odd"], tokenizer=tok, variant="none")
    with pytest.raises(ValueError, match="shape"):
        odd.generate(ids, mask, preference=[0.5, 0.5])


def test_mage_with_chunk_search(folders):
    tok = folders["tok"]
    ids, mask = _prompts(tok)
    search = dict(beam_width=2, expansion=2, chunk_length=3)
    mage = MAGE([folders["bb0"], folders["bb1"]], tokenizer=tok, variant="I-M",
                experts=[folders["e0"], folders["e1"]], reference=folders["ref"], search=search)
    out = mage.generate(ids, mask, preference=[0.6, 0.4], max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    again = mage.generate(ids, mask, preference=[0.6, 0.4], max_new_tokens=6,
                          generator=torch.Generator().manual_seed(0))
    assert out.shape[0] == 2 and out.shape[1] > ids.shape[1] and torch.equal(out, again)
    assert len(mage.merges) == 2  # one base and one expert merge for the one preference
    sampled = mage.generate(ids, mask, preference=[0.6, 0.4], max_new_tokens=6, do_sample=True,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, out)  # do_sample=True is what search does anyway
    with pytest.raises(ValueError, match="do_sample=False is not supported by mogen.search"):
        mage.generate(ids, mask, preference=[0.6, 0.4], max_new_tokens=6, do_sample=False)


# --------------------------------------------------------------------------- #
# Each variant against the same decode built by hand at mu = (0.3, 0.7): the
# Stage-1 base merged with B^-1 mu solved here (not by mogen's closed form),
# the guides weighted or merged by hand.
# --------------------------------------------------------------------------- #

MU = [0.3, 0.7]


def _bone_soup_by_hand(mu, beta, alpha):
    """``(1 + alpha) B^-1 mu`` and ``-alpha`` with ``B`` built and solved numerically."""
    n = len(mu)
    b = np.full((n, n), (1 - beta) / (n - 1))
    np.fill_diagonal(b, beta)
    return [(1 + alpha) * float(x) for x in np.linalg.solve(b, np.asarray(mu))], -alpha


def _merged(tmp_path, name, sources, coefs):
    from transformers import AutoModelForCausalLM

    mogen.merge(sources, coefs, tmp_path / name, progress=False)
    return AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()


@pytest.fixture(scope="module")
def stage1(folders, tmp_path_factory):
    """The Stage-1 base at MU: backbones by Bone Soup (beta 0.8), extrapolated from the SFT model by 0.2."""
    lam, sft = _bone_soup_by_hand(MU, 0.8, 0.2)
    return _merged(tmp_path_factory.mktemp("stage1"), "base", [folders["bb0"], folders["bb1"], folders["sft"]],
                   lam + [sft])


def _mage(folders, variant, **kwargs):
    return MAGE([folders["bb0"], folders["bb1"]], tokenizer=folders["tok"], variant=variant, bone_beta=0.8, alpha=0.2,
                sft=folders["sft"], **kwargs)


def _decode(base, folders, guides, weights, **kwargs):
    ids, mask = _prompts(folders["tok"])
    return mogen.generate(base, ids, mask, guides=guides, tokenizer=folders["tok"], weights=weights,
                          max_new_tokens=10, **kwargs)


def _mage_decode(mage, folders):
    ids, mask = _prompts(folders["tok"])
    return mage.generate(ids, mask, preference=MU, max_new_tokens=10)


def test_e_is_the_value_ensemble_weighted_by_mu(folders, stage1):
    from transformers import AutoModelForCausalLM

    values = [mogen.ValueGuide(AutoModelForCausalLM.from_pretrained(folders[v]).eval()) for v in ("v0", "v1")]
    out = _mage_decode(_mage(folders, "E", value_models=[folders["v0"], folders["v1"]], gamma=2.0), folders)
    assert torch.equal(out, _decode(stage1, folders, values, MU, gamma=2.0))
    assert not torch.equal(out, _decode(stage1, folders, values, [0.7, 0.3], gamma=2.0))  # mu decides


def test_e_m_is_guidance_by_the_value_models_merged_with_mu(folders, stage1, tmp_path):
    value = _merged(tmp_path, "value", [folders["v0"], folders["v1"]], MU)
    out = _mage_decode(_mage(folders, "E-M", value_models=[folders["v0"], folders["v1"]], gamma=2.0), folders)
    assert torch.equal(out, _decode(stage1, folders, [mogen.ValueGuide(value)], None, gamma=2.0))


def test_i_m_is_guidance_by_the_bone_soup_merge_of_the_experts(folders, stage1, tmp_path):
    """MAGE-I-M (MAGE 5.6.1): experts merged with (1 + alpha) B_e^-1 mu, minus alpha times the reference."""
    from transformers import AutoModelForCausalLM

    lam, ref_coef = _bone_soup_by_hand(MU, 0.7, 0.3)
    expert = _merged(tmp_path, "expert", [folders["e0"], folders["e1"], folders["ref"]], lam + [ref_coef])
    ref = AutoModelForCausalLM.from_pretrained(folders["ref"]).eval()
    experts = dict(experts=[folders["e0"], folders["e1"]], reference=folders["ref"])
    out = _mage_decode(_mage(folders, "I-M", expert_beta=0.7, expert_alpha=0.3, **experts), folders)
    assert torch.equal(out, _decode(stage1, folders, [mogen.ProxyGuide(expert, ref)], None))
    linear = _merged(tmp_path, "linear", [folders["e0"], folders["e1"]], MU)
    out_linear = _mage_decode(_mage(folders, "I-M-linear", **experts), folders)
    assert torch.equal(out_linear, _decode(stage1, folders, [mogen.ProxyGuide(linear, ref)], None))
    assert not torch.equal(out, out_linear)  # the two merges steer differently
    # expert_beta = 1, no extrapolation: B_e = I, so Bone Soup is the linear merge
    plain = _mage_decode(_mage(folders, "I-M", expert_beta=1.0, **experts), folders)
    assert torch.equal(plain, out_linear)


def test_variant_errors(folders):
    with pytest.raises(ValueError, match="variant must be one of .*I-M-linear"):
        _mage(folders, "I-M-prime")
    with pytest.raises(ValueError, match="singular"):
        _mage(folders, "I-M", experts=[folders["e0"], folders["e1"]], reference=folders["ref"], expert_beta=0.5)
    with pytest.raises(ValueError, match="needs experts"):
        _mage(folders, "I-M-linear", reference=folders["ref"])
