"""megatron_ar.kernels"""
