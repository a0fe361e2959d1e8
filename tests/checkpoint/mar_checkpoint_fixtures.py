"""Small random HF checkpoints and a tiny real tokenizer for the checkpoint tests.

The configs exercise every converter path: GQA (query groups < heads), Gemma-2's head_dim !=
hidden/heads, sliding window shorter than the test sequence, both soft-caps, tied (Gemma-2) and
untied (Llama) embeddings, and vocabs Megatron must pad: Llama 1000 (1024 at TP 1/2/4), Gemma-2
1100 (1152 at TP=1 but 1280 at TP=2, so loading a TP=1 conversion at TP=2 exercises
megatron-core's padded-vocab resharding).
"""
from __future__ import annotations

import glob
import os
from typing import Dict

import torch

VOCAB = {"llama": 1000, "gemma2": 1100}
TOKENIZER_VOCAB = 1000


def tiny_hf_model(kind: str, seed: int = 0):
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB["llama"], hidden_size=64, intermediate_size=96,
                          num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                          max_position_embeddings=256, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    elif kind == "gemma2":
        cfg = Gemma2Config(vocab_size=VOCAB["gemma2"], hidden_size=64, intermediate_size=96,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=24, max_position_embeddings=256, sliding_window=8,
                           query_pre_attn_scalar=24, attn_logit_softcapping=50.0,
                           final_logit_softcapping=30.0)
        model = Gemma2ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    # Random norm weights (HF initialises them to 1 / 0), so a norm mix-up cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if kind == "llama" else 0.0))
    return model.eval()


def train_tiny_tokenizer(texts, out_dir: str, vocab_size: int = TOKENIZER_VOCAB) -> str:
    """A byte-level BPE (HF ``tokenizers``) trained on real text, saved for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>")
    fast.save_pretrained(out_dir)
    return out_dir


def read_safetensors_dir(directory: str) -> Dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with safe_open(path, framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def assert_bit_identical(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b), f"names differ: {sorted(set(a) ^ set(b))[:10]}"
    for k in a:
        assert a[k].dtype == b[k].dtype, (k, a[k].dtype, b[k].dtype)
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
        assert torch.equal(a[k], b[k]), f"{k}: values differ"
