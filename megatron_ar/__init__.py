"""megatron_ar: Megatron-Core based training for Arabic-centric LLMs (Fanar-style).

Importing the package has no side effects: nothing is registered and torch.cuda is not touched.
The CPU execution layer is installed explicitly (``megatron_ar.runtime.install_cpu_emulation``)
or by ``megatron_ar.runtime.init_distributed`` when no GPU is present.
"""

__version__ = "0.1.0"
