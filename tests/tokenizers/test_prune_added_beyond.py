"""Pruning a tokenizer whose added tokens lie *after* ``model.vocab`` (Llama-3's layout: 128,000
BPE ids, then 256 specials; ``train_tokenizer``'s layout too), on real hadith text.

Oracle: the original tokenizer through ``tokenizers`` (ids mapped by ``id_map``) and the text
itself (round trip)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, bukhari_records):
    from megatron_ar.tokenizers.morphbpe import TrainConfig, train_tokenizer
    from megatron_ar.tokenizers.prune import PruneConfig, prune_vocab

    d = tmp_path_factory.mktemp("prune-added")
    with open(d / "corpus.jsonl", "w", encoding="utf-8") as f:
        for r in bukhari_records[:300]:
            f.write(json.dumps({"text": r["arabic"] + "\n" + r["english"]["text"]},
                               ensure_ascii=False) + "\n")
    with open(d / "held.jsonl", "w", encoding="utf-8") as f:
        for r in bukhari_records[7000:7100]:
            f.write(json.dumps({"text": r["english"]["text"] + " " + r["arabic"]},
                               ensure_ascii=False) + "\n")
    train_tokenizer(TrainConfig(inputs=[str(d / "corpus.jsonl")], output=str(d / "tok"),
                                algorithm="bpe", vocab_size=2048, min_frequency=2,
                                show_progress=False))
    res = prune_vocab(PruneConfig(tokenizer=str(d / "tok"), corpus=[str(d / "corpus.jsonl")],
                                  target_vocab_size=1024, output=str(d / "out"),
                                  heldout=[str(d / "held.jsonl")], progress=False))
    return d, res


def test_added_tokens_follow_the_kept_model_vocab(pruned):
    from tokenizers import Tokenizer

    d, res = pruned
    old_tj = json.loads((d / "tok" / "tokenizer.json").read_text(encoding="utf-8"))
    n_model = len(old_tj["model"]["vocab"])
    beyond = [a for a in old_tj["added_tokens"] if a["id"] >= n_model]
    assert len(beyond) >= 64  # the layout under test: specials after the BPE ids
    id_map = np.load(d / "out" / "id_map.npy")
    new_tj = json.loads((d / "out" / "tokenizer.json").read_text(encoding="utf-8"))
    k = len(new_tj["model"]["vocab"])
    assert sorted(new_tj["model"]["vocab"].values()) == list(range(k))
    new = Tokenizer.from_file(str(d / "out" / "tokenizer.json"))
    assert new.get_vocab_size() == res.vocab_size == 1024
    for a in beyond:  # every special kept, renumbered right after the kept BPE ids
        assert id_map[a["id"]] >= k and new.token_to_id(a["content"]) == id_map[a["id"]]
    assert sorted(int(id_map[a["id"]]) for a in beyond) == list(range(k, k + len(beyond)))


def test_text_with_specials_round_trips_and_maps_ids(pruned, bukhari_records):
    from tokenizers import Tokenizer

    d, res = pruned
    old = Tokenizer.from_file(str(d / "tok" / "tokenizer.json"))
    new = Tokenizer.from_file(str(d / "out" / "tokenizer.json"))
    id_map = np.load(d / "out" / "id_map.npy")
    specials = [a["content"] for a in json.loads(
        (d / "tok" / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]][:3]
    text = specials[0] + bukhari_records[7200]["arabic"] + specials[1] + "Hello" + specials[2]
    e_old = old.encode(text, add_special_tokens=False).ids
    e_new = new.encode(text, add_special_tokens=False).ids
    for s in specials:  # the specials are recognised whole, at their mapped ids
        assert int(id_map[old.token_to_id(s)]) in e_new
    assert new.decode(e_new, skip_special_tokens=False) == text
    assert old.decode(e_old, skip_special_tokens=False) == text
    assert res.heldout["roundtrip_ok_after"] == res.heldout["docs"] == 100
