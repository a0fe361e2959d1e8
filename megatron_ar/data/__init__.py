"""megatron_ar.data"""
