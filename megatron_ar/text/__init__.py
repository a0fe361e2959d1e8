"""megatron_ar.text"""
