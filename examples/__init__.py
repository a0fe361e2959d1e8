"""Examples: recipes, launchers and the CPU quickstart.

A regular package so that ``python -m examples.quickstart.build_data`` (run from the repository
root) and the tests import the quickstart's data builder by one qualified name; it is not part of
the installed ``megatron_ar`` distribution.
"""
