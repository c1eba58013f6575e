"""mogen sweep --ray: the same texts, means and metrics as a serial sweep; a worker killed mid-point, a point that
keeps failing, a missing extra, the config's resources.

The Ray tests share one local instance (``ray.init(num_cpus=2)`` on 2 cores, a few seconds to start) whose workers run
``ray_faults.install`` (this folder) at start-up: faults are injected by files, never by mogen's code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from mogen import cli
from mogen.evaluation import load_sweep_config, run_sweep
from mogen.evaluation.report import texts_and_figures

from ray_faults import attempts, point_key
from tiny_models import metaspace_tokenizer, tiny_llama, value_llama

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny models and the serial run of a sweep of three method kinds (the base alone, a stateful merge, a MAGE
    with its live base and value guides), two seeds."""
    root = tmp_path_factory.mktemp("raysweep")
    tok = metaspace_tokenizer()
    v = len(tok)
    for name, model in [("base", tiny_llama(v, 1)), ("pa", tiny_llama(v, 2)), ("pb", tiny_llama(v, 3)),
                        ("bba", tiny_llama(v, 4)), ("bbb", tiny_llama(v, 5)), ("va", value_llama(v, 9)),
                        ("vb", value_llama(v, 10))]:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(root / name)
    tok.save_pretrained(root / "base")
    cfg = {
        "output": "serial", "prompts": ["the river", "a busy street"], "preferences": 3, "samples": 2, "seeds": 2,
        "reference_point": [-1, -1], "rewards": ["tests_sweep_rewards:count_e", "tests_sweep_rewards:count_a"],
        "decoding": {"max_new_tokens": 6, "do_sample": True, "seed": 0}, "bootstrap": {"resamples": 50},
        "models": {"base": "base", "policies": ["pa", "pb"], "backbones": ["bba", "bbb"], "value_models": ["va", "vb"]},
        "methods": [{"name": "base", "kind": "base"},
                    {"name": "Rewarded Soup", "kind": "rewarded_soup"},
                    {"name": "MAGE-E-M", "kind": "mage", "variant": "E-M"}],
    }
    run_sweep(cfg, root=root, progress=False)
    return root, cfg


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """A local Ray instance for this module; its workers import ``ray_faults`` from this folder and read their
    fault files from the yielded folder."""
    import torch

    ray = pytest.importorskip("ray")
    faults = tmp_path_factory.mktemp("faults")
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    # An actor reserves as many CPUs as the driver's torch threads (2 on a 2-core machine).
    ray.init(num_cpus=max(2, torch.get_num_threads()), include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"MOGEN_TEST_FAULTS": str(faults), "PYTHONPATH": path},
                          "worker_process_setup_hook": "ray_faults.install"})
    yield faults
    ray.shutdown()


def _points(folder: Path) -> int:
    return len(list((folder / "points").rglob("*.json")))


@pytest.mark.distributed
def test_ray_sweep_equals_the_serial_sweep(setup, ray_instance, capsys):
    """Through the CLI: every text, mean and metric of the serial run; the actors ran torch with the driver's
    thread count (Ray's default, 1, may change CPU arithmetic in the last bits and so the sampled tokens), and
    every run is compared in full."""
    import torch

    root, cfg = setup
    before = len(attempts(ray_instance))
    path = root / "ray.yaml"
    path.write_text(yaml.safe_dump(dict(cfg, output="ray")))
    assert cli.main(["sweep", "--config", str(path), "--ray", "--quiet"]) == 0
    assert "18 point(s) decoded" in capsys.readouterr().out
    same = texts_and_figures(root / "serial")
    assert len(same["samples.jsonl"].splitlines()) == 3 * 3 * 2 * 2 * 2 and texts_and_figures(root / "ray") == same
    logged = attempts(ray_instance)[before:]
    assert len(logged) == 18 and {t for _, t in logged} == {torch.get_num_threads()}


def _only(cfg: dict, name: str, resources: dict) -> dict:
    """``cfg`` with only its method ``name`` (whose points keep their fingerprints), with ``resources``."""
    return dict(cfg, methods=[{**m, "resources": resources} for m in cfg["methods"] if m["name"] == name])


def _same_points(folder: Path, serial: Path) -> bool:
    """Every point file in ``folder`` has the texts (and scores) of the same file in ``serial``."""
    def texts(f: Path) -> dict:
        point = json.loads(f.read_text())
        return {k: point[k] for k in ("method", "preference", "seed", "fingerprint", "tokens", "samples")}

    files = sorted((folder / "points").rglob("*.json"))
    return bool(files) and all(texts(f) == texts(serial / f.relative_to(folder)) for f in files)


@pytest.mark.distributed
def test_a_worker_killed_mid_point_is_restarted_and_the_point_retried(setup, ray_instance):
    root, cfg = setup
    key = point_key("MAGE-E-M", 0.5, 1)
    (ray_instance / f"{key}.exit").touch()
    before = len(attempts(ray_instance))
    res = run_sweep(dict(_only(cfg, "MAGE-E-M", {}), output="killed"), root=root, progress=False, ray=True)
    assert res.decoded == 6 and not (ray_instance / f"{key}.exit").exists()  # the worker did die
    keys = [k for k, _ in attempts(ray_instance)[before:]]
    assert keys.count(key) == 2 and len(keys) == 7  # that point twice, on the restarted actor
    assert _points(root / "killed") == 6 and _same_points(root / "killed", root / "serial")


@pytest.mark.distributed
def test_a_point_that_keeps_failing_is_reported_and_the_others_finish(setup, ray_instance):
    """Two actors of one method at once (1 CPU each, the driver's torch threads); one point raises every time."""
    import torch

    from mogen.evaluation.ray_sweep import PointsFailed

    root, cfg = setup
    key = point_key("Rewarded Soup", 1.0, 0)
    (ray_instance / f"{key}.raise").touch()
    before = len(attempts(ray_instance))
    run = dict(_only(cfg, "Rewarded Soup", {"actors": 2, "num_cpus": 1, "torch_threads": torch.get_num_threads()}),
               output="failing")
    with pytest.raises(PointsFailed, match=r"1 of 6 point\(s\) failed \(each tried up to 2 time\(s\)\)") as info:
        run_sweep(run, root=root, progress=False, ray=True, max_retries=1)
    assert [(item.label(), error) for item, error in info.value.failures] == [
        ("Rewarded Soup at [1.0, 0.0] seed 0", f"RuntimeError: injected failure at {key}")]
    logged = attempts(ray_instance)[before:]
    assert [k for k, _ in logged].count(key) == 2  # the first try and one retry
    assert {t for _, t in logged} == {torch.get_num_threads()}  # torch_threads, not Ray's num_cpus
    folder = root / "failing"
    assert _points(folder) == 5 and not (folder / "metrics.md").exists()  # the others written; no reports
    (ray_instance / f"{key}.raise").unlink()
    again = run_sweep(run, root=root, progress=False)  # a serial rerun resumes
    assert (again.decoded, again.skipped) == (1, 5)
    assert _points(folder) == 6 and _same_points(folder, root / "serial")


def test_ray_flag_without_ray_names_the_extra(setup, monkeypatch, capsys):
    root, cfg = setup
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    path = root / "noray.yaml"
    path.write_text(yaml.safe_dump(dict(cfg, output="noray")))
    assert cli.main(["sweep", "--config", str(path), "--ray", "--quiet"]) == 2
    assert "needs the `ray` package, in mogen's `ray` extra: pip install 'mogen[ray]'" in capsys.readouterr().err
    with pytest.raises(ImportError, match=r"pip install 'mogen\[ray\]'"):
        run_sweep(dict(cfg, output="noray"), root=root, progress=False, ray="auto")
    assert not (root / "noray").exists()  # said before any work


def test_resources_are_checked_and_merged(setup):
    import torch

    from mogen.evaluation.ray_sweep import threads_and_cpus

    root, cfg = setup
    loaded = load_sweep_config(dict(cfg, resources={"num_cpus": 2, "num_gpus": 1}, max_retries=0,
                                    methods=[cfg["methods"][0], {**cfg["methods"][1], "resources": {"num_gpus": 0.5,
                                                                                                     "actors": 2}}]),
                               root)
    assert loaded.max_retries == 0
    assert [m.resources for m in loaded.methods] == [{"num_cpus": 2.0, "num_gpus": 1.0},
                                                     {"num_cpus": 2.0, "num_gpus": 0.5, "actors": 2}]
    assert loaded.methods[1].params == {}  # not a parameter of the method: not in its points' fingerprint
    threads = torch.get_num_threads()  # an actor's torch threads, and the CPUs it reserves:
    assert threads_and_cpus({}) == (threads, float(threads))  # the driver's, by default
    assert threads_and_cpus({"num_cpus": 4.0}) == (4, 4.0) and threads_and_cpus({"num_cpus": 0.5}) == (1, 0.5)
    assert threads_and_cpus({"torch_threads": 3}) == (3, 3.0)
    for patch, match in [({"resources": {"num_gpus": -1}}, r"resources.num_gpus: must be a number >= 0"),
                         ({"resources": {"num_gpus": 1.5}}, r"resources.num_gpus: must be a fraction <= 1 or a whole"),
                         ({"resources": {"gpus": 1}}, r"resources.gpus: unknown key\(s\) \['gpus'\]"),
                         ({"max_retries": -1}, r"max_retries: must be an int >= 0"),
                         ({"methods": [{**cfg["methods"][0], "resources": {"actors": 0}}]},
                          r"methods\[0\].resources.actors: must be an int >= 1"),
                         ({"methods": [{**cfg["methods"][0], "resources": {"torch_threads": "2"}}]},
                          r"methods\[0\].resources.torch_threads: expected an int")]:
        with pytest.raises(ValueError, match=match):
            load_sweep_config({**cfg, **patch}, root)
