"""train_tokenizer's id layouts on real hadith text: the default (learned ids, then specials,
then reserved slots, as Llama-3) and autoresearch-v2's (card: 32,768 ids, BPE 0-31999, 512
reserved from 32000, 12 specials at 32756-32767), here at 2,048 ids with the same shape.
Oracle: the written tokenizer.json read back by ``tokenizers`` and by transformers."""
import json

import pytest

from megatron_ar.tokenizers.morphbpe import TrainConfig, train_tokenizer

pytestmark = pytest.mark.unit

SPECIALS = ("<|think|>", "<|/think|>", "<|tool_call|>", "<|tool_result|>", "<|bos|>",
            "<|eos|>", "<|pad|>", "<|sep|>", "<|system|>", "<|user|>", "<|assistant|>",
            "<|eot|>")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bukhari_records):
    d = tmp_path_factory.mktemp("layout")
    with open(d / "c.jsonl", "w", encoding="utf-8") as f:
        for r in bukhari_records[:400]:
            f.write(json.dumps({"text": r["arabic"] + "\n" + r["english"]["text"]},
                               ensure_ascii=False) + "\n")
    return d


def _train(corpus, name, **kw):
    out = corpus / name
    summary = train_tokenizer(TrainConfig(inputs=[str(corpus / "c.jsonl")], output=str(out),
                                          algorithm="bpe", vocab_size=2048, min_frequency=2,
                                          special_tokens=SPECIALS, reserved=64,
                                          show_progress=False, **kw))
    return out, summary


def test_specials_at_top_with_capped_model(corpus, bukhari_records):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    out, s = _train(corpus, "top", model_vocab_size=1500, specials_at_top=True)
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    model_ids = sorted(tj["model"]["vocab"].values())
    assert model_ids == list(range(len(model_ids))) and len(model_ids) == 1500
    added = {a["content"]: a["id"] for a in tj["added_tokens"]}
    assert [added[t] for t in SPECIALS] == list(range(2048 - 12, 2048))
    reserved = sorted(i for c, i in added.items() if c.startswith("<|reserved_special_token_"))
    assert reserved == list(range(1500, 2048 - 12)) and s["reserved_tokens"] == len(reserved)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "<|user|>" + bukhari_records[500]["arabic"][:80] + "<|eot|>"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids[0] == 2048 - 3 and ids[-1] == 2047 and max(ids[1:-1]) < 1500
    assert tok.decode(ids, skip_special_tokens=False) == text
    hf = AutoTokenizer.from_pretrained(str(out))
    assert len(hf) == 2048 and hf.convert_tokens_to_ids("<|eot|>") == 2047


def test_default_layout_unchanged(corpus):
    out, s = _train(corpus, "default")
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    n_model = len(tj["model"]["vocab"])
    added = {a["content"]: a["id"] for a in tj["added_tokens"]}
    assert [added[t] for t in SPECIALS] == list(range(n_model, n_model + 12))
    assert max(added.values()) == 2047 and s["vocab_size"] == 2048


@pytest.mark.parametrize("bad", [100, 2048 - 12 - 64 + 1])
def test_model_vocab_size_bounds(corpus, bad):
    with pytest.raises(ValueError, match=r"TrainConfig.model_vocab_size: must be in"):
        TrainConfig(inputs=[str(corpus / "c.jsonl")], output=str(corpus / "x"),
                    vocab_size=2048, special_tokens=SPECIALS, reserved=64,
                    model_vocab_size=bad).validate()
