"""megatron_ar.training: recipes, the fit loop, optimizer + LR schedule, checkpoints, evaluation,
back-tracing, logging.

Modules (importing this package imports none of them; megatron-core is loaded on use)
- :mod:`config`: typed YAML recipe + Megatron-LM flag overrides (``load_config``).
- :mod:`builder`: recipe -> process groups, model chunks, DDP, optimizer, data, callbacks,
  resume / initial weights (``build_run``); ``megatron_ar.train`` is parse -> build -> fit.
- :mod:`loop`: ``fit`` / ``train_step`` on megatron-core's forward-backward schedules.
- :mod:`optimizer`: megatron-core optimizer + ``OptimizerParamScheduler`` with Fanar's cool-down.
- :mod:`rampup`: batch-size ramp-up (``--rampup-batch-size``) on megatron-core's micro-batch
  calculator: the global batch per step, keyed by consumed samples.
- :mod:`checkpointing`: dist_checkpointing save (publish by rename, keep-last-K) and resume at
  any TP/PP/DP; initial weights for continual pretraining.
- :mod:`callbacks`: metrics/TensorBoard/wandb logging, loss-spike detector, batch recorder,
  evaluation and checkpoint triggers.
- :mod:`eval`: validation loss and bits-per-byte per set, multiple-choice tasks, generations.
- :mod:`backtrace`, :mod:`plots`, :mod:`memory`, :mod:`plan`, :mod:`metrics`: the library
  behind ``tools/backtrace.py``, ``tools/plot_run.py``, ``tools/estimate_memory.py``,
  ``--dry-run`` and the MFU figures.
- :mod:`tasks`: multiple-choice last-word cloze tasks from any texts, in the format ``eval``
  reads (the CPU quickstart's data and its Arabic cloze are built in ``examples/quickstart/``).
"""
