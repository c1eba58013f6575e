"""``make gpu-check``: everything a GPU box must show, in one command of under 8 minutes.

Steps, each reported as ``[step] ok``, ``[step] SKIPPED: why`` or ``[step] FAILED: why``:

1. environment  Python, torch and its CUDA, the GPU and driver, CUDA_HOME / nvcc, and the
                installed packages against pyproject.toml's requirements;
2. build        the extension with MOGEN_FORCE_CUDA=1 into build/gpu-check/lib (the
                checkout's own mogen_ext/_C is left alone), then an import check;
3. cuda-tests   ``pytest -m cuda`` over the test modules with CUDA tests, against that build;
4. kernels      benchmarks/gpu_kernels.py: K1, K2, K3 against the HBM roofline
                -> benchmarks/results/gpu_kernels.md;
5. decode       benchmarks/gpu_decode.py: a 7B-shaped base with two 0.5B-shaped guide
                pairs against the base alone -> benchmarks/results/gpu_decode.md.

Without a GPU, steps 3 to 5 are skipped, saying so; the benchmarks' code still runs on
CPU at toy sizes (nothing written) and the CUDA tests are collected, so what a GPU
would run is known to import. Exit status: 1 if a step failed; 3 if one was skipped
and ``--require-gpu`` was given; else 0 (a machine without a GPU that did all it can
has not failed: the summary says what it skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "gpu-check"
LIB = BUILD / "lib"
BUDGET_S = 480.0  # one lent device session must fit a run and a rerun
CAPS_S = {"build": 300, "cuda-tests": 150, "kernels": 150, "decode": 180}  # each step's own limit

Outcome = Tuple[str, str]  # (status: ok / skipped / failed, what happened)


@dataclass
class Facts:
    """What step 1 found; later steps decide from it."""
    torch: str = "?"
    torch_cuda: Optional[str] = None
    gpu: Optional[str] = None
    capability: Optional[str] = None
    built: bool = False
    notes: List[str] = field(default_factory=list)


@dataclass
class Result:
    step: str
    status: str
    why: str
    seconds: float


def compact(line: str) -> str:
    """A ninja progress line as '[3/14] csrc/cuda/merge.cu' (the full command stays in the log)."""
    m = re.match(r"(\[\d+/\d+\]) .* -c (?:-c )?(\S+)", line)
    return f"{m.group(1)} {os.path.relpath(m.group(2), ROOT)}\n" if m else line


def sh(cmd: List[str], env: Dict[str, str], timeout: float, log: Path) -> Tuple[Optional[int], str]:
    """Runs ``cmd`` in the checkout, output teed to ``log`` (compiler lines shortened on the terminal);
    (exit code, or None when it ran past ``timeout`` and was killed; the output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    lines: List[str] = []
    # Its own process group, so a timeout also ends what it started (ninja, nvcc, pytest's children).
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, start_new_session=True) as proc, open(log, "w") as f:
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        watchdog = threading.Timer(timeout, kill)  # fires even while the step prints nothing
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # streamed, so a long step shows progress
                f.write(line)
                lines.append(line)
                print("    " + compact(line), end="", flush=True)
            rc = proc.wait()
        finally:
            watchdog.cancel()
    return (None if fired.is_set() else rc), "".join(lines)


def child_env(built: bool, module: bool = False) -> Dict[str, str]:
    """The environment of the steps' processes: the build under build/gpu-check first when there is one,
    else this checkout's python/ and mogen_ext as ``make test`` finds them. ``module``: for ``python -m``,
    which would put the working directory (the checkout, with its own mogen_ext) ahead of the build
    unless PYTHONSAFEPATH is set (a script keeps its own folder first, which the benchmarks need)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [str(LIB), str(ROOT / "python")] if built else [str(ROOT / "python"), str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    if built and module:
        env["PYTHONSAFEPATH"] = "1"
    return env


def gpu_from_nvidia_smi() -> Optional[str]:
    """'NAME, driver VERSION' of GPU 0 as nvidia-smi lists it, or None (no tool or no GPU)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    return ", driver ".join(x.strip() for x in first.split(",")) if first else None


def nvcc_version() -> Optional[str]:
    """'13.0 at /usr/local/cuda/bin/nvcc': the nvcc that torch's extension builder (and so setup.py) uses."""
    from torch.utils.cpp_extension import CUDA_HOME

    home = CUDA_HOME or os.environ.get("CUDA_HOME")  # a CPU torch looks for no toolkit at all
    nvcc = str(Path(home) / "bin" / "nvcc") if home else None
    if not nvcc or not Path(nvcc).exists():
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
    m = re.search(r"release ([\d.]+)", out.stdout)
    return f"{m.group(1) if m else '?'} at {nvcc}"


def unmet_requirements() -> List[str]:
    """pyproject.toml's dependencies that the running Python lacks or has at another version."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    unmet = []
    for dep in deps:
        req = Requirement(dep)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            unmet.append(f"{req.name} is not installed (pyproject.toml wants {req})")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{req.name} {have} does not meet {req.specifier} (pyproject.toml)")
    return unmet


def step_environment(facts: Facts, args: argparse.Namespace) -> Outcome:
    """Python, torch, GPU, driver, toolkit, requirements; fails where a later step would fail for a reason
    found here (a GPU that torch cannot see, a package at a version mogen does not support)."""
    import torch

    facts.torch, facts.torch_cuda = torch.__version__, torch.version.cuda
    smi = gpu_from_nvidia_smi()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.gpu, facts.capability = f"{p.name} ({p.total_memory / 2**30:.0f} GiB)", f"{p.major}.{p.minor}"
    lines = [f"Python {sys.version.split()[0]} at {sys.executable}",
             f"torch {facts.torch}, built for CUDA {facts.torch_cuda or 'none (a CPU build)'}",
             f"GPU: {facts.gpu or 'none visible to torch'}; nvidia-smi: {smi or 'no GPU listed (or no nvidia-smi)'}",
             f"CUDA toolkit: {nvcc_version() or 'no nvcc found (set CUDA_HOME)'}"]
    for line in lines:
        print("    " + line)
    problems = unmet_requirements()
    if smi and not facts.gpu:
        problems.append(f"nvidia-smi lists a GPU ({smi}) but torch {facts.torch} cannot use it")
    if problems:
        return "failed", "; ".join(problems)
    return "ok", f"torch {facts.torch}, GPU {facts.gpu or 'none'}"


def step_build(facts: Facts, args: argparse.Namespace, timeout: float) -> Outcome:
    """setup.py with MOGEN_FORCE_CUDA=1 into build/gpu-check (ninja: a rerun recompiles only what changed)."""
    env = dict(os.environ, MOGEN_FORCE_CUDA="1")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    if facts.capability and "TORCH_CUDA_ARCH_LIST" not in env:
        env["TORCH_CUDA_ARCH_LIST"] = facts.capability  # this GPU only: half the nvcc time of the default pair
    info = ROOT / "mogen_ext" / "_build_info.py"
    saved = info.read_bytes() if info.exists() else None
    cmd = [sys.executable, "setup.py", "-q", "build", "--build-base", str(BUILD), "--build-lib", str(LIB)]
    try:
        rc, out = sh(cmd, env, timeout, BUILD / "build.log")
    finally:  # setup.py rewrites the checkout's _build_info.py, which describes the checkout's own _C
        if saved is not None:
            info.write_bytes(saved)
    refused = re.search(r"MOGEN_FORCE_CUDA=1 but the CUDA kernels cannot be built: .*", out)
    if rc is None:
        return "failed", f"the build ran past {timeout:.0f} s (log: {BUILD / 'build.log'})"
    if refused:
        return "skipped", refused.group(0) + " (set GPU_PY to a Python whose torch is a CUDA build)"
    if rc != 0:
        errors = [ln.strip() for ln in out.splitlines() if re.search(r"error:|Error:", ln)][:3]
        return "failed", f"setup.py exited {rc}: {' / '.join(errors) or 'see the log'} (log: {BUILD / 'build.log'})"
    probe = ("import mogen_ext as m; assert m.has_cuda_kernels, m.load_error or 'built without CUDA kernels'; "
             "print(m.__file__, m.build_info().get('cuda_arch_list'))")
    check = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=child_env(True, module=True),
                           capture_output=True, text=True)
    if check.returncode != 0 or str(LIB) not in check.stdout:
        return "failed", f"the build does not import with its CUDA kernels: {(check.stderr or check.stdout)[-500:]}"
    facts.built = True
    return "ok", f"mogen_ext with CUDA kernels, arch {check.stdout.split()[-1]}, in {LIB}"


def no_gpu_reason(facts: Facts) -> Optional[str]:
    """Why the GPU steps cannot run here, or None when they can."""
    if not facts.gpu:
        return "no GPU (torch.cuda.is_available() is False)"
    if not facts.built:
        return "no CUDA build of mogen_ext (see the build step)"
    return None


def cuda_test_files() -> List[str]:
    """The test modules that hold CUDA tests (``pytest.mark.cuda`` or ``markers.requires_cuda_kernels``).

    Why not all of tests/: pytest imports every module it collects before ``-m`` deselects, and a
    GPU box's preinstalled Python may lack a package that only some CPU test module imports."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if re.search(r"pytest\.mark\.cuda|requires_cuda_kernels", p.read_text()))


def step_cuda_tests(facts: Facts, args: argparse.Namespace, timeout: float) -> Outcome:
    """``pytest -m cuda`` over the CUDA test modules on the build; without a GPU, only collected."""
    cmd = [sys.executable, "-m", "pytest", *cuda_test_files(), "-m", "cuda", "-p", "no:cacheprovider"]
    why = no_gpu_reason(facts)
    if why:
        rc, out = sh(cmd + ["--collect-only", "-qq"], child_env(facts.built, module=True), timeout,
                     BUILD / "cuda-tests.log")
        counts = [int(n) for n in re.findall(r"^tests/\S+\.py: (\d+)$", out, re.M)]
        if rc != 0 or not counts:
            return "failed", f"collecting the CUDA tests failed (exit {rc}; log: {BUILD / 'cuda-tests.log'})"
        return "skipped", (f"{why}; the {sum(counts)} tests in {len(counts)} files that `pytest -m cuda` selects "
                           "were collected, not run")
    rc, out = sh(cmd + ["-q", "-rs"], child_env(True, module=True), timeout, BUILD / "cuda-tests.log")
    tail = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    summary = tail[-1].strip("= ") if tail else "no pytest summary"
    if rc is None:
        return "failed", f"ran past {timeout:.0f} s ({summary})"
    return ("ok" if rc == 0 else "failed"), summary


def step_bench(script: str, facts: Facts, timeout: float) -> Outcome:
    """A GPU benchmark (it writes its results file); without a GPU, its CPU dry run at toy sizes."""
    log = BUILD / f"{Path(script).stem}.log"
    why = no_gpu_reason(facts)
    if why:
        rc, _ = sh([sys.executable, script, "--device", "cpu", "--shapes", "tiny", "--no-write"],
                   child_env(facts.built), timeout, log)
        if rc != 0:
            return "failed", f"{why}, and its CPU dry run failed (exit {rc}; log: {log})"
        return "skipped", f"{why}; its code ran on CPU at toy sizes, nothing written"
    rc, out = sh([sys.executable, script, "--device", "cuda"], child_env(True), timeout, log)
    if rc != 0:
        return "failed", f"exit {rc if rc is not None else f'(killed after {timeout:.0f} s)'}; log: {log}"
    wrote = re.findall(r"^wrote (.*)$", out, re.M)
    goal = re.findall(r"2 guide pairs \|[^|]*\|[^|]*\|\s*([^|]*?)\s*\|", out)
    return "ok", ("; guided/base " + ", ".join(goal) if goal else "") + f" wrote {', '.join(wrote) or 'nothing'}"


STEPS: List[Tuple[str, Callable[..., Outcome]]] = [
    ("environment", lambda f, a, t: step_environment(f, a)),
    ("build", step_build),
    ("cuda-tests", step_cuda_tests),
    ("kernels", lambda f, a, t: step_bench("benchmarks/gpu_kernels.py", f, t)),
    ("decode", lambda f, a, t: step_bench("benchmarks/gpu_decode.py", f, t)),
]


def run_steps(args: argparse.Namespace) -> List[Result]:
    """Every step in order, each within its own cap and what is left of the budget."""
    facts, results, start = Facts(), [], time.monotonic()
    for name, fn in STEPS:
        left = args.budget - (time.monotonic() - start)
        timeout = min(CAPS_S.get(name, 60), left)
        print(f"[{name}] ...", flush=True)
        t0 = time.monotonic()
        if timeout < 10:
            status, why = "skipped", f"only {max(left, 0):.0f} s of the {args.budget:.0f} s budget left"
        else:
            try:
                status, why = fn(facts, args, timeout)
            except Exception as exc:  # a step's own bug must not hide the later steps' outcome
                status, why = "failed", f"{type(exc).__name__}: {exc}"
        results.append(Result(name, status, why, time.monotonic() - t0))
        print(f"[{name}] {status.upper() if status != 'ok' else 'ok'}: {why} ({results[-1].seconds:.0f} s)",
              flush=True)
    return results


def summary(results: List[Result], args: argparse.Namespace) -> int:
    """Prints what ran, what was skipped and why; the exit status (see the module's docstring)."""
    total = sum(r.seconds for r in results)
    print(f"\ngpu-check summary: {total:.0f} s of the {args.budget:.0f} s budget"
          f"{'' if total <= args.budget else ' (OVER BUDGET)'}")
    for r in results:
        print(f"  {r.step:<12} {r.status.upper() if r.status != 'ok' else 'ok':<8} {r.seconds:5.0f} s  {r.why}")
    failed = [r.step for r in results if r.status == "failed"]
    skipped = [r.step for r in results if r.status == "skipped"]
    print(f"ran: {', '.join(r.step for r in results if r.status == 'ok') or 'nothing'}; "
          f"skipped: {', '.join(skipped) or 'nothing'}; failed: {', '.join(failed) or 'nothing'}")
    if failed:
        return 1
    if skipped and args.require_gpu:
        print("--require-gpu: a skipped step counts as a failure here")
        return 3
    if skipped:
        print("Nothing failed, but the steps above marked SKIPPED did not run on this machine.")
    return 0


def default_cuda_home() -> None:
    """Sets CUDA_HOME, when unset, to a toolkit that has the CUDA headers: the one the nvcc on PATH
    belongs to (links resolved), else /usr/local/cuda. Why: torch's extension builder takes the
    parent of PATH's nvcc as the toolkit, so a /usr/local/bin/nvcc wrapper or link makes it look
    for cuda_runtime_api.h under /usr/local/include, and the build fails there."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    for home in ([Path(nvcc).resolve().parents[1]] if nvcc else []) + [Path("/usr/local/cuda")]:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime_api.h").exists():
            os.environ["CUDA_HOME"] = str(home)
            return


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--require-gpu", action="store_true", help="exit 3 when a step was skipped (on a GPU box)")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all steps together (default 480)")
    args = ap.parse_args(argv)
    default_cuda_home()  # before torch.utils.cpp_extension reads it
    return summary(run_steps(args), args)


if __name__ == "__main__":
    sys.exit(main())
