"""Private readers of megatron-core's indexed (``.bin``/``.idx``) datasets and ``GPTDataset``."""
from __future__ import annotations

import numpy

from megatron_ar.compat.version import upstream_attr


def open_index(idx_path: str):
    """megatron-core's ``.idx`` reader alone, without mapping the ``.bin``.

    Versions: all known (``_IndexReader(idx_path, multimodal)`` in 0.16.1-0.19.2; 0.19 adds
    optional ``sequences_per_dataset``/``dtype_code`` arguments we do not pass).
    Why: the public ``IndexedDataset`` also opens (mmaps) the ``.bin``; reading the statistics
    of a dataset (sequence lengths, document boundaries, dtype) needs only the ``.idx``, and
    megatron-core's private ``megatron.core.datasets.indexed_dataset._IndexReader`` is the
    reader of that format. Not an upstream bug.
    Without it: dataset statistics would need the ``.bin`` present and mapped, or a second
    ``.idx`` parser. Raises what ``_IndexReader`` raises on a bad file (AssertionError,
    ValueError, OSError, struct.error).
    """
    from megatron.core.datasets import indexed_dataset

    reader = upstream_attr(indexed_dataset, "_IndexReader", "megatron_ar.compat.indexed.open_index",
                           ("idx_path", "multimodal"))
    return reader(idx_path, multimodal=False)


def gpt_sample_tokens(dataset, index: int) -> numpy.ndarray:
    """The ``sequence_length + add_extra_token`` token ids of sample ``index`` of a megatron-core
    ``GPTDataset`` (what ``tokens``/``labels`` are cut from), as a numpy array.

    Versions: all known; the private ``GPTDataset._query_document_sample_shuffle_indices``
    returns ``(tokens, document_ids)`` up to 0.18 and ``(tokens, document_ids,
    document_lengths)`` from 0.19, so only the first element is used.
    Why: ``GPTDataset.__getitem__`` returns torch tensors already split into tokens/labels
    (and masks); the raw token window is only available from this private method.
    Without it: the raw window would have to be rebuilt from ``tokens`` + the last label.
    """
    query = upstream_attr(dataset, "_query_document_sample_shuffle_indices",
                          "megatron_ar.compat.indexed.gpt_sample_tokens", ("idx",))
    return query(index)[0]
