"""Readers of the served vectors: the HTTP and topic readers, a vector cache and a ranker (no worker code)."""
