"""The HTTP service: an OpenAI-compatible chat endpoint, REST for memories, the dashboard."""
