"""megatron_ar: a Megatron-Core based training framework for Arabic-centric LLMs.

C++ extensions: every folder ``csrc/<name>/`` holding ``*.cpp`` files is built with pybind11
into the module ``megatron_ar._ext.<name>`` (C++17, -O3, pthreads). Folders that also hold
``*.cu`` files are built with torch's CUDAExtension only when a CUDA torch and nvcc are present;
on CPU machines they are skipped and the torch fallbacks in ``megatron_ar/kernels`` are used.
"""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:  # pybind11 missing: pure-Python fallbacks are used at run time
        return [], {}
    exts = []
    for folder in sorted(glob.glob(os.path.join(HERE, "csrc", "*"))):
        name = os.path.basename(folder)
        cpp = sorted(glob.glob(os.path.join(folder, "*.cpp")))
        cu = glob.glob(os.path.join(folder, "*.cu"))
        if not cpp or cu:
            continue  # CUDA folders are handled by _cuda_extensions
        exts.append(
            Pybind11Extension(
                f"megatron_ar._ext.{name}",
                [os.path.relpath(p, HERE) for p in cpp],
                cxx_std=17,
                extra_compile_args=["-O3", "-pthread"],
                extra_link_args=["-pthread"],
            )
        )
    from pybind11.setup_helpers import build_ext

    return exts, {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()

setup(
    name="megatron_ar",
    version="0.1.0",
    description="Megatron-Core based training framework for Arabic-centric LLMs",
    # The CLI scripts under tools/ are also the package ``megatron_ar_tools``, so that scripts in
    # tools/ and tools/checkpoint/ share tools/_cli.py without editing sys.path.
    packages=find_packages(include=["megatron_ar", "megatron_ar.*"])
    + ["megatron_ar_tools", "megatron_ar_tools.checkpoint"],
    package_dir={"megatron_ar_tools": "tools"},
    python_requires=">=3.10",
    install_requires=[
        # torch is pinned by the installer (.ci/install.sh) to the local CPU build; a range here
        # that the installed build satisfies keeps pip from pulling a CUDA build.
        "torch>=2.4",
        # 0.16.x is the newest megatron-core that supports Python 3.11.
        "megatron-core>=0.16.1,<0.17",
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
        "dev": [
            "pytest",
            "pytest-timeout",
            "pybind11",
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
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["megatron-ar-train=megatron_ar.train:main"]},
    zip_safe=False,
)
