"""A sweep on Ray gives the serial sweep's results: ``python benchmarks/ray_agreement.py OUT [options]``.

Writes the embedded demo's sweep config (:func:`mogen.demo.sweep.demo_sweep_config`, on the cached demo models)
twice, into ``OUT/serial.yaml`` and ``OUT/ray.yaml`` (run folders ``OUT/serial`` and ``OUT/ray``), runs
``mogen sweep --config OUT/serial.yaml`` and ``mogen sweep --config OUT/ray.yaml --ray [ADDRESS]``, and
compares what the two runs must share (:func:`mogen.evaluation.report.texts_and_figures`: samples.jsonl, the
mean rewards, the metrics table with its intervals; not the decoding times or the recorded command line).
Prints each command, its time and the verdict; exits 1 when the runs differ. Runs already in OUT resume.

``--samples`` / ``--points`` / ``--methods`` make it smaller (the demo's defaults otherwise: 8 samples per
prompt, 11 preferences, every method); ``--seeds K`` decodes K seeds; ``--torch-threads N`` runs the Ray
actors with N torch threads (does the thread count change the texts on this machine?).
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml


def _configs(out: Path, args: argparse.Namespace) -> dict:
    """Writes the two configs; returns name -> config file."""
    from mogen.demo.sweep import DEMO_METHODS, demo_sweep_config
    from mogen.demo.train import DemoConfig, build_demo_models

    models = build_demo_models(DemoConfig(), log=lambda line: print(line, flush=True))  # a no-op when cached
    methods = DEMO_METHODS[: args.methods] if args.methods else None
    files = {}
    for name in ("serial", "ray"):
        kw = {k: v for k, v in (("samples", args.samples), ("points", args.points)) if v is not None}
        cfg = demo_sweep_config(models, out / name, methods=methods, **kw)
        cfg["seeds"] = args.seeds
        if name == "ray" and args.torch_threads:
            cfg["resources"] = {"torch_threads": args.torch_threads}
        files[name] = out / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return files


def _run(command: list) -> float:
    print("$ " + shlex.join(command), flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - t0


def main(argv: list) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="a folder for the two configs and run folders")
    p.add_argument("--samples", type=int, default=None, help="samples per prompt and preference (demo: 8)")
    p.add_argument("--points", type=int, default=None, help="preference points (demo: 11)")
    p.add_argument("--methods", type=int, default=None, help="the first N of the demo's methods (demo: all 11)")
    p.add_argument("--seeds", type=int, default=1, help="decoding seeds (default 1)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="the Ray run's resources.torch_threads (default: this process's torch threads)")
    p.add_argument("--address", default=None, help="a Ray cluster's address (default: a new local instance)")
    args = p.parse_args(argv)
    from mogen.evaluation.report import texts_and_figures

    args.out.mkdir(parents=True, exist_ok=True)
    files = _configs(args.out, args)
    mogen = [sys.executable, "-m", "mogen.cli"]
    seconds = {"serial": _run([*mogen, "sweep", "--config", str(files["serial"]), "--quiet"])}
    seconds["ray"] = _run([*mogen, "sweep", "--config", str(files["ray"]), "--quiet", "--ray",
                           *([args.address] if args.address else [])])
    a, b = texts_and_figures(args.out / "serial"), texts_and_figures(args.out / "ray")
    texts = len(a["samples.jsonl"].splitlines())
    print(f"serial {seconds['serial']:.0f} s, ray {seconds['ray']:.0f} s; {texts} texts")
    for part in a:
        same = a[part] == b[part]
        print(f"{part}: {'equal' if same else 'DIFFERENT'}")
        if not same:
            sys.stdout.writelines(list(difflib.unified_diff(a[part].splitlines(True), b[part].splitlines(True),
                                                            "serial", "ray"))[:40])
    return 0 if a == b else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
