"""hedge: a self-hosted LLM gateway."""
