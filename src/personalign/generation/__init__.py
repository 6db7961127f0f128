"""Personalized generation: prompt building, logit mixing, the decoding loop, adapters."""
