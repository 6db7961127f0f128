"""Small interfaces and their implementations: embedders, memory stores, language models."""
