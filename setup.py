"""Build mogen and its compiled extension ``mogen_ext._C``.

CPU kernels are always built. CUDA kernels are added when torch is a CUDA build
and a CUDA toolkit is found (no GPU needed). Environment:
  MOGEN_FORCE_CUDA=1     build the CUDA kernels or fail saying why
  MOGEN_SKIP_CUDA=1      never build the CUDA kernels
  TORCH_CUDA_ARCH_LIST   target GPUs (default "8.0;9.0+PTX")
  MAX_JOBS               parallel compile jobs (ninja)
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _want_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if _flag("MOGEN_SKIP_CUDA"):
        return False
    have = torch.version.cuda is not None and CUDA_HOME is not None
    if _flag("MOGEN_FORCE_CUDA") and not have:
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit was found (set CUDA_HOME)"
        sys.exit(f"MOGEN_FORCE_CUDA=1 but the CUDA kernels cannot be built: {why}")
    return have


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _write_build_info(with_cuda: bool, cxx_flags: list[str], nvcc_flags: list[str]) -> None:
    import torch

    info = {
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "with_cuda": with_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "cxx_flags": cxx_flags,
        "nvcc_flags": nvcc_flags if with_cuda else [],
        "python": sys.version.split()[0],
    }
    path = os.path.join(ROOT, "mogen_ext", "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time.\nBUILD_INFO = " + repr(info) + "\n")


def extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda = _want_cuda()
    sources = (_sources("csrc/*.cpp") + _sources("csrc/common/*.cpp") + _sources("csrc/cpu/*.cpp")
               + _sources("csrc/io/*.cpp"))
    # -fopenmp: at::parallel_for is an inline OpenMP loop in ATen's headers and
    # runs serially in code compiled without it. libgomp resolves to torch's copy.
    # -Wno-psabi: the 64-byte vector helpers in cpu/ are always inlined, so the
    # AVX-512 argument-passing ABI note GCC prints about them does not apply.
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp", "-Wno-psabi"]
    nvcc: list[str] = []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        sources += _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/*.cu")
        nvcc = ["-O3", "-std=c++17", "-lineinfo", "-DMOGEN_WITH_CUDA"]
        cxx.append("-DMOGEN_WITH_CUDA")
    _write_build_info(with_cuda, cxx, nvcc)
    kind = CUDAExtension if with_cuda else CppExtension
    args = {"cxx": cxx, "nvcc": nvcc} if with_cuda else {"cxx": cxx}
    return [
        kind(
            name="mogen_ext._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=args,
            extra_link_args=["-fopenmp"],
        )
    ]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension):
        def build_extensions(self) -> None:
            # cuda/fusion.cu and cuda/fusion.cpp share a stem (one op, one file per
            # backend); name CUDA objects fusion.cu.o, as CMake does, so they do not collide.
            compiler = self.compiler
            plain = compiler.object_filenames

            def object_filenames(sources, strip_dir=False, output_dir=""):
                sources = list(sources)
                objs = plain(sources, strip_dir=strip_dir, output_dir=output_dir)
                ext = compiler.obj_extension
                return [o[: -len(ext)] + ".cu" + ext if str(src).endswith(".cu") else o for src, o in zip(sources, objs)]

            compiler.object_filenames = object_filenames
            super().build_extensions()

    return BuildExt.with_options(use_ninja=True)


def main() -> None:
    setup(
        packages=find_packages("python") + ["mogen_ext"],
        package_dir={"": "python", "mogen_ext": "mogen_ext"},
        ext_modules=extensions(),
        cmdclass={"build_ext": build_ext_class()},
        zip_safe=False,
    )


if __name__ == "__main__":
    main()
