"""megatron_ar: a Megatron-Core based training framework for Arabic-centric LLMs.

C++ extensions: every folder ``csrc/<name>/`` becomes the module ``megatron_ar._ext.<name>``
(C++17, -O3), with ``csrc/include`` on the include path (the headers shared by host and device
code, ``csrc/include/mar/``):
- only ``*.cpp`` files, none including ``<torch/extension.h>``: pybind11 alone (``dedup``);
- only ``*.cpp`` files, including ``<torch/extension.h>``: torch's ``CppExtension`` (the CPU
  builds of the kernels, ``*_cpu``), which needs torch in the build environment;
- ``*.cu`` files too: torch's ``CUDAExtension``, when the build environment's torch is a CUDA
  build and ``nvcc`` is found. The ``.cu`` files include no torch header (raw pointers in,
  launchers out), so ``.ci/check_cuda.sh`` compile-checks them with plain ``nvcc`` on a
  machine without a GPU or a CUDA torch.
Build with ``pip install --no-build-isolation .`` so that the build sees the environment's
torch; pip's isolated build environment has no torch, and ``pyproject.toml`` deliberately does
not list it: pip would download a multi-GB CUDA build.

An extension that is skipped or fails to compile does not fail the install (the library has a
pure-Python fallback for each), but the build prints a warning block naming the extension and
the reason (visible with ``pip install -v``), records it in ``megatron_ar/_ext/build_report.json``
and the library logs one warning naming the missing extension when the fallback first runs.
``MEGATRON_AR_REQUIRE_EXTENSIONS=1`` turns a skipped or failed extension into a build error.
"""
import glob
import json
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext as _setuptools_build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIRE_ENV = "MEGATRON_AR_REQUIRE_EXTENSIONS"
REPORT = "build_report.json"
_report = {}  # extension module -> "built" | "skipped: ..." | "failed: ..."


def _warn(name: str, status: str, reason: str) -> None:
    _report[name] = f"{status}: {reason}"
    bar = "#" * 78
    print(f"\n{bar}\n# WARNING: C++ extension {name} {status.upper()}\n#   reason: {reason}\n"
          "#   megatron_ar will use its pure-Python fallback (much slower).\n"
          "#   Fix: install a C++ compiler / pybind11 (CUDA: a CUDA torch + nvcc, then\n"
          "#   pip install --no-build-isolation .); set MEGATRON_AR_REQUIRE_EXTENSIONS=1 to make\n"
          f"#   this an error.\n{bar}\n", file=sys.stderr, flush=True)
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        raise SystemExit(f"{REQUIRE_ENV} is set and {name} was {status}: {reason}")


# Absolute: torch's BuildExtension compiles through ninja from the build folder, where a
# relative -I would not resolve.
INCLUDE = os.path.join(HERE, "csrc", "include")


def _uses_torch(paths) -> bool:
    for p in paths:
        with open(os.path.join(HERE, p), encoding="utf-8") as f:
            if "<torch/extension.h>" in f.read():
                return True
    return False


def _folders():
    """csrc/<name>/ -> (name, .cpp sources, .cu sources, uses torch), relative to this
    directory (``csrc/include`` holds headers only)."""
    for folder in sorted(glob.glob(os.path.join(HERE, "csrc", "*"))):
        rel = lambda paths: [os.path.relpath(p, HERE) for p in sorted(paths)]  # noqa: E731
        cpp, cu = rel(glob.glob(os.path.join(folder, "*.cpp"))), rel(glob.glob(os.path.join(folder, "*.cu")))
        if cpp or cu:
            yield os.path.basename(folder), cpp, cu, _uses_torch(cpp)


def _torch_unavailable_reason():
    """None when torch's CppExtension can build here, else why not."""
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension  # noqa: F401
    except ImportError as exc:
        return (f"torch is not importable in the build environment ({exc}); build with "
                "pip install --no-build-isolation in an environment with torch")
    return None


def _cuda_unavailable_reason():
    """None when torch's CUDAExtension can build here, else why not."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        return (f"torch is not importable in the build environment ({exc}); build with "
                "pip install --no-build-isolation in an environment with a CUDA torch")
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if cpp_extension.CUDA_HOME is None and shutil.which("nvcc") is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    return None


def _extensions():
    """(extensions, build_ext base class)."""
    exts, base = [], None
    folders = list(_folders())
    cpp_only = [(n, cpp) for n, cpp, cu, torch_ext in folders if not cu and not torch_ext]
    torch_cpu = [(n, cpp) for n, cpp, cu, torch_ext in folders if not cu and torch_ext]
    cuda = [(n, cpp + cu) for n, cpp, cu, _ in folders if cu]
    if cpp_only:
        try:
            from pybind11.setup_helpers import Pybind11Extension
            from pybind11.setup_helpers import build_ext as pybind11_build_ext
        except ImportError as exc:
            for name, _ in cpp_only:
                _warn(f"megatron_ar._ext.{name}", "skipped", f"pybind11 is not importable ({exc})")
        else:
            base = pybind11_build_ext
            for name, sources in cpp_only:
                exts.append(Pybind11Extension(f"megatron_ar._ext.{name}", sources, cxx_std=17,
                                              include_dirs=[INCLUDE],
                                              extra_compile_args=["-O3", "-pthread"],
                                              extra_link_args=["-pthread"]))
    if torch_cpu:
        reason = _torch_unavailable_reason()
        if reason is not None:
            for name, _ in torch_cpu:
                _warn(f"megatron_ar._ext.{name}", "skipped", reason)
        else:
            from torch.utils.cpp_extension import BuildExtension, CppExtension

            base = BuildExtension
            for name, sources in torch_cpu:
                # -fopenmp: at::parallel_for runs on torch's OpenMP pool (intra-op threads)
                exts.append(CppExtension(f"megatron_ar._ext.{name}", sources,
                                         include_dirs=[INCLUDE],
                                         extra_compile_args=["-O3", "-std=c++17", "-fopenmp"],
                                         extra_link_args=["-fopenmp"]))
    if cuda:
        reason = _cuda_unavailable_reason()
        if reason is not None:
            for name, _ in cuda:
                _warn(f"megatron_ar._ext.{name}", "skipped", reason)
        else:
            from torch.utils.cpp_extension import BuildExtension, CUDAExtension

            base = BuildExtension  # compiles .cu with nvcc and .cpp with the host compiler
            for name, sources in cuda:
                exts.append(CUDAExtension(f"megatron_ar._ext.{name}", sources,
                                          include_dirs=[INCLUDE],
                                          extra_compile_args={"cxx": ["-O3", "-std=c++17"],
                                                              "nvcc": ["-O3", "-std=c++17"]}))
    return exts, base or _setuptools_build_ext


ext_modules, _base_build_ext = _extensions()


class build_ext(_base_build_ext):
    """Builds each extension on its own: a failure is reported (see module docstring) and the
    others still build. Writes ``megatron_ar/_ext/build_report.json`` next to the modules."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
            _report[ext.name] = "built"
        except Exception as exc:  # compiler missing or failing: the fallback is used at run time
            _warn(ext.name, "failed", f"{type(exc).__name__}: {exc}")

    def run(self):
        super().run()
        folder = os.path.join(HERE if self.inplace else self.build_lib, "megatron_ar", "_ext")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, REPORT), "w", encoding="utf-8") as f:
            json.dump(_report, f, indent=1, sort_keys=True)


setup(
    name="megatron_ar",
    version="0.1.0",
    description="Megatron-Core based training framework for Arabic-centric LLMs",
    # The CLI scripts under tools/ are also the package ``megatron_ar_tools``, so that scripts in
    # tools/ and tools/checkpoint/ share tools/_cli.py without editing sys.path.
    packages=find_packages(include=["megatron_ar", "megatron_ar.*"])
    + ["megatron_ar_tools", "megatron_ar_tools.checkpoint"],
    package_dir={"megatron_ar_tools": "tools"},
    package_data={"megatron_ar._ext": [REPORT]},
    python_requires=">=3.10",
    install_requires=[
        # A range the installed torch satisfies keeps pip from replacing it; .ci/install.sh pins
        # the local CPU build first, NVIDIA's containers bring their CUDA build.
        "torch>=2.4",
        # The range megatron_ar.compat supports (megatron_ar/compat/version.py): 0.16.x is the
        # newest for Python 3.11; 0.17-0.19 (Python 3.12, NVIDIA's containers) were checked by
        # reading their source. Importing megatron_ar.compat outside it fails, naming both.
        "megatron-core>=0.16.1,<0.20",
        "transformers>=4.46",
        "safetensors",
        "tokenizers",
        "numpy",
        "pyyaml",
        "tqdm",
        "rich",
        "psutil",
        "tensorboard",
        "zstandard",
    ],
    extras_require={
        "te": ["transformer-engine[pytorch]"],
        "apex": ["apex"],
        # Experiment tracking next to the always-on tensorboard (logging.wandb_project).
        "wandb": ["wandb"],
        # GPL-3 Arabic segmenter: an optional MorphBPE plug-in, never a hard dependency.
        "morph": ["farahidi"],
        # tools/plot_run.py, tools/eval_tokenizer.py --plot.
        "plots": ["matplotlib"],
        # punkt sentence splitting (data.sentence_split falls back to rules without it).
        "nlp": ["nltk"],
        # tools/perplexity.py (KenLM's query module).
        "kenlm": ["kenlm"],
        # tools/quality_classifier.py --backend fasttext.
        "fasttext": ["fasttext==0.9.3"],
        # benchmarks/dedup.py compares with datasketch's MinHashLSH.
        "bench": ["datasketch"],
        "dev": [
            "pytest",
            "pytest-timeout",
            "pybind11>=2.10",
            "datasketch",
            "sentencepiece",
            "gguf",
            "accelerate",
            "matplotlib",
            "nltk",
            "wandb",
        ],
    },
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    entry_points={"console_scripts": ["megatron-ar-train=megatron_ar.train:main"]},
    zip_safe=False,
)
