"""megatron_ar._ext"""
