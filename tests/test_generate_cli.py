"""`mogen decode` and `mogen demo` on local model folders."""

from __future__ import annotations

import pytest
import torch

import mogen
from mogen import cli
from mogen.demo import DemoConfig, decode_demo, load_demo_models, nature_rate, city_rate

from tiny_models import byte_level_tokenizer, metaspace_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A byte-level base and a metaspace guide pair saved as local model folders."""
    root = tmp_path_factory.mktemp("models")
    bl, ms = byte_level_tokenizer(), metaspace_tokenizer()
    paths = {}
    for name, model, tok in [("base", tiny_llama(len(bl), 0, hidden=48, eos_token_id=bl.eos_token_id), bl),
                             ("expert", tiny_llama(len(ms), 10), ms),
                             ("reference", tiny_llama(len(ms), 11), ms)]:
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def test_decode_streams_the_same_text_as_generate(folders, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "The cat sees"
    rc = cli.main(["decode", "--base", folders["base"], "--guide", f"{folders['expert']}:{folders['reference']}",
                   "--weights", "1.5", "--prompt", prompt, "--max-new-tokens", "12"])
    assert rc == 0
    printed = capsys.readouterr().out
    base = AutoModelForCausalLM.from_pretrained(folders["base"]).eval()
    tok = AutoTokenizer.from_pretrained(folders["base"])
    gtok = AutoTokenizer.from_pretrained(folders["expert"])
    guide = mogen.ProxyGuide(AutoModelForCausalLM.from_pretrained(folders["expert"]).eval(),
                             AutoModelForCausalLM.from_pretrained(folders["reference"]).eval(), tokenizer=gtok)
    enc = tok([prompt], return_tensors="pt")
    out = mogen.generate(base, enc["input_ids"], guides=[guide], tokenizer=tok, weights=[1.5], max_new_tokens=12)
    expected = prompt + tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert printed.rstrip("\n") == expected


def test_search_streams_the_best_beam_and_ends_with_search_s_result(folders, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "The cat sees"
    rc = cli.main(["search", "--base", folders["base"], "--guide", f"{folders['expert']}:{folders['reference']}",
                   "--weights", "1.5", "--prompt", prompt, "--max-new-tokens", "12", "--beam-width", "2",
                   "--expansion", "2", "--chunk-length", "4", "--temperature", "2", "--seed", "3"])
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.err.count("[round ") == 3 and "live beam" in captured.err and "tokens/s" in captured.err
    base = AutoModelForCausalLM.from_pretrained(folders["base"]).eval()
    tok = AutoTokenizer.from_pretrained(folders["base"])
    guide = mogen.ProxyGuide(AutoModelForCausalLM.from_pretrained(folders["expert"]).eval(),
                             AutoModelForCausalLM.from_pretrained(folders["reference"]).eval(),
                             tokenizer=AutoTokenizer.from_pretrained(folders["expert"]))
    enc = tok([prompt], return_tensors="pt")
    out = mogen.search(base, enc["input_ids"], guides=[guide], tokenizer=tok, weights=[1.5], max_new_tokens=12,
                       beam_width=2, expansion=2, chunk_length=4, temperature=2.0,
                       generator=torch.Generator().manual_seed(3))
    best = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    printed = captured.out.rstrip("\n")
    final = printed.rsplit("[best beam changed]\n", 1)[-1]  # the text after the last change of best beam
    assert final.endswith(best) and printed.startswith(prompt)
    assert cli.main(["search", "--base", folders["base"], "--prompt", "x", "--beam-width", "0"]) == 2
    assert "beam_width" in capsys.readouterr().err


def _load(folders):
    """The CLI's models and tokenizers, loaded as ``mogen decode`` / ``mogen search`` load them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(folders["base"]).eval()
    tok = AutoTokenizer.from_pretrained(folders["base"])
    guide = mogen.ProxyGuide(AutoModelForCausalLM.from_pretrained(folders["expert"]).eval(),
                             AutoModelForCausalLM.from_pretrained(folders["reference"]).eval(),
                             tokenizer=AutoTokenizer.from_pretrained(folders["expert"]))
    return base, tok, guide


PROCESSOR_ARGS = ["--repetition-penalty", "1.5", "--min-new-tokens", "3", "--stop", "e", "--stop", "!"]
PROCESSOR_KWARGS = dict(repetition_penalty=1.5, min_new_tokens=3, stop_strings=["e", "!"])


def test_decode_passes_processor_options_to_generate(folders, capsys):
    prompt = "The cat sees"
    args = ["decode", "--base", folders["base"], "--guide", f"{folders['expert']}:{folders['reference']}",
            "--weights", "1.5", "--prompt", prompt, "--max-new-tokens", "12"]
    assert cli.main(args) == 0
    plain = capsys.readouterr().out
    assert cli.main(args + PROCESSOR_ARGS) == 0
    printed = capsys.readouterr().out
    base, tok, guide = _load(folders)
    enc = tok([prompt], return_tensors="pt")
    out = mogen.generate(base, enc["input_ids"], guides=[guide], tokenizer=tok, weights=[1.5], max_new_tokens=12,
                         **PROCESSOR_KWARGS)
    assert printed.rstrip("\n") == prompt + tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert printed != plain


def test_decode_num_return_sequences_prints_every_sample(folders, capsys):
    prompt = "A dog"
    args = ["decode", "--base", folders["base"], "--guide", f"{folders['expert']}:{folders['reference']}",
            "--weights", "1.5", "--prompt", prompt, "--max-new-tokens", "8", "--sample", "--seed", "3",
            "--num-return-sequences", "3"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    base, tok, guide = _load(folders)
    enc = tok([prompt], return_tensors="pt")
    out = mogen.generate(base, enc["input_ids"], enc["attention_mask"], guides=[guide], tokenizer=tok,
                         weights=[1.5], max_new_tokens=8, do_sample=True, temperature=1.0, top_k=None, top_p=None,
                         num_return_sequences=3, generator=torch.Generator().manual_seed(3))
    texts = [prompt + tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]
    assert printed == "".join(f"[sequence {i + 1}/3]\n{t}\n" for i, t in enumerate(texts))
    assert len(set(texts)) > 1
    assert cli.main(args[:-5] + args[-4:]) == 2  # without --sample
    assert "--num-return-sequences 3 needs --sample" in capsys.readouterr().err


def test_search_passes_processor_options_and_refuses_num_return_sequences(folders, capsys):
    prompt = "The cat sees"
    args = ["search", "--base", folders["base"], "--guide", f"{folders['expert']}:{folders['reference']}",
            "--weights", "1.5", "--prompt", prompt, "--max-new-tokens", "12", "--beam-width", "2",
            "--expansion", "2", "--chunk-length", "4", "--seed", "3"]
    assert cli.main(args + PROCESSOR_ARGS) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    base, tok, guide = _load(folders)
    enc = tok([prompt], return_tensors="pt")
    out = mogen.search(base, enc["input_ids"], guides=[guide], tokenizer=tok, weights=[1.5], max_new_tokens=12,
                       beam_width=2, expansion=2, chunk_length=4, generator=torch.Generator().manual_seed(3),
                       **PROCESSOR_KWARGS)
    best = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert printed.rsplit("[best beam changed]\n", 1)[-1].endswith(best)
    assert cli.main(args + ["--num-return-sequences", "2"]) == 2
    err = capsys.readouterr().err
    assert "--num-return-sequences" in err and "return_scores=True" in err and "mogen decode --sample" in err


def test_decode_with_a_device_map_places_models_and_decodes_the_same(folders, capsys):
    # device_map (accelerate) is how models too big for one GPU are spread over several;
    # on this machine "auto" places everything on the CPU, which must not change the text.
    pytest.importorskip("accelerate", reason="--device-map needs the accelerate package")
    args = ["decode", "--base", folders["base"], "--guide", f"{folders['expert']}:{folders['reference']}",
            "--weights", "1.5", "--prompt", "The cat sees", "--max-new-tokens", "10"]
    assert cli.main(args) == 0
    plain = capsys.readouterr().out
    assert cli.main(args + ["--device-map", "auto"]) == 0
    assert capsys.readouterr().out == plain


def test_decode_sampling_bf16_and_explicit_tokenizer(folders, capsys):
    spec = f"{folders['expert']}:{folders['reference']}:{folders['expert']}"
    args = ["decode", "--base", folders["base"], "--guide", spec, "--guide", spec, "--weights", "0.3,0.7",
            "--prompt", "A dog", "--max-new-tokens", "8", "--sample", "--top-p", "0.9", "--temperature", "0.8",
            "--dtype", "bf16", "--seed", "3"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("A dog")


@pytest.mark.parametrize("args,message", [
    (["--weights", "1,2"], "--weights has 2 values but 1 guides"),
    (["--weights", "a"], "comma-separated numbers"),
    (["--dtype", "int8"], "dtype must be one of"),
])
def test_decode_errors(folders, capsys, args, message):
    rc = cli.main(["decode", "--base", folders["base"], "--guide", f"{folders['expert']}:{folders['reference']}",
                   "--prompt", "x", *args])
    assert rc == 2 and message in capsys.readouterr().err


def test_decode_missing_folder_and_bad_guide_spec(folders, capsys):
    assert cli.main(["decode", "--base", "/no/such/dir", "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["decode", "--base", folders["base"], "--guide", "only_one", "--prompt", "x"]) == 2
    assert "EXPERT_DIR:REF_DIR" in capsys.readouterr().err


def test_rewards():
    assert nature_rate("the river and the forest") == pytest.approx(0.4)
    assert city_rate("the busy street near the train station") == pytest.approx(3 / 7)
    assert nature_rate("") == 0.0


SMALL = DemoConfig(corpus_size=600, topic_size=300, base_vocab=400, guide_vocab=300, base_hidden=32,
                   base_layers=1, guide_hidden=32, guide_layers=1, batch=16, base_steps=20, reference_steps=20,
                   expert_steps=10, value_prompts=8, value_samples=2, value_tokens=6, value_epochs=1)


def test_demo_builds_caches_and_decodes(tmp_path, capsys):
    """A scaled-down demo: built once, deterministic, loaded from cache, decodable with `mogen decode`."""
    logs: list[str] = []
    first = load_demo_models(SMALL, tmp_path, log=logs.append)
    assert any("building" in line for line in logs)
    path = first.path
    assert (path / "meta.json").is_file() and (path / "base" / "model.safetensors").is_file()
    weights = {k: v.clone() for k, v in first.experts["city"].state_dict().items()}
    logs.clear()
    again = load_demo_models(SMALL, tmp_path, log=logs.append)
    assert not logs  # loaded from the cache, nothing rebuilt
    # deterministic: a rebuild gives the same weights
    rebuilt = load_demo_models(SMALL, tmp_path, rebuild=True, log=logs.append)
    for k, v in rebuilt.experts["city"].state_dict().items():
        assert torch.equal(v, weights[k]), k
    for method in ("proxy", "value", "value-merged"):
        res = decode_demo(again, method=method, samples=1, max_new_tokens=6, prompts=["one day i saw the", "after lunch"])
        assert len(res.rewards) == 4 and all(len(r) == 2 for r in res.rewards)
    assert set(again.values) == {"nature", "city"}
    assert again.values["city"].config.mogen_value_model["objectives"] == ["city"]
    rc = cli.main(["decode", "--base", str(path / "base"),
                   "--guide", f"{path / 'expert_nature'}:{path / 'reference'}",
                   "--guide", f"{path / 'expert_city'}:{path / 'reference'}",
                   "--weights", "1,0", "--prompt", "one day i saw the", "--max-new-tokens", "6"])
    assert rc == 0 and capsys.readouterr().out.startswith("one day i saw the")
    for top_k in ([], ["--value-top-k", "5"]):
        rc = cli.main(["decode", "--base", str(path / "base"), "--value", str(path / "value_nature"),
                       "--value", str(path / "value_city"), "--weights", "1,0", "--gamma", "3",
                       "--prompt", "one day i saw the", "--max-new-tokens", "6", *top_k])
        assert rc == 0 and capsys.readouterr().out.startswith("one day i saw the")
    assert cli.main(["decode", "--base", str(path / "base"), "--value", str(path / "reference"), "--prompt", "x"]) == 2
    assert "not a mogen value model" in capsys.readouterr().err


def _cached_demo():
    from mogen.demo.train import demo_dir

    if not (demo_dir(DemoConfig()) / "meta.json").is_file():
        pytest.skip("the demo models are not cached yet: run `make demo` (about a minute) to build them")
    return load_demo_models(DemoConfig(), log=lambda line: None)


@pytest.mark.parametrize("method,margin", [("proxy", 0.1), ("value", 0.1), ("value-merged", 0.1)])
def test_demo_table_shows_the_tradeoff(method, margin):
    """With the real demo models (built by `make demo` / `mogen demo`): objective 1 is higher at (1, 0)
    than at (0, 1), objective 2 the other way round, for proxy guides and for explicit value guidance
    (ensembled and merged)."""
    from mogen.demo.run import DEMO_GAMMA

    res = decode_demo(_cached_demo(), method=method, samples=2, gamma=DEMO_GAMMA)
    rewards = dict(zip(res.weightings, res.rewards))
    nature_first, city_first = rewards[(1.0, 0.0)], rewards[(0.0, 1.0)]
    assert nature_first[0] > city_first[0] + margin
    assert city_first[1] > nature_first[1] + margin


def test_demo_value_models_predict_their_rewards():
    """Each demo value model trained in at most 60 s and ranks held-out responses by reward (Spearman >= 0.5)."""
    import json

    meta = json.loads((_cached_demo().path / "meta.json").read_text())
    stats = meta["value_models"]
    assert set(stats) == {"nature", "city"}
    for name, st in stats.items():
        assert st["heldout_spearman"] >= 0.5, (name, st)
        assert st["seconds"] <= 60, (name, st)
        assert st["heldout_examples"] >= 50, (name, st)
