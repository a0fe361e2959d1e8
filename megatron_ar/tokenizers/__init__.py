"""megatron_ar.tokenizers"""
