"""The CPU quickstart's data (``examples/quickstart_cpu.sh``), also used by the tests.

- :mod:`sources`: finds and reads the locally installed real text (hadith, Quran, Python docs,
  the standard library); ``tests/material.py`` reads the same text through it.
- :mod:`data`: the mixed Arabic / English / code corpus, its MorphBPE tokenizer, the ``.bin/.idx``
  datasets and the Arabic cloze task.
- ``python -m examples.quickstart.build_data`` and ``python -m examples.quickstart.build_cloze_task``:
  their command lines.
"""
