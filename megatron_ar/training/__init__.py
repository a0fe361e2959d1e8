"""megatron_ar.training"""
