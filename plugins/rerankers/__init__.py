"""Built-in rerankers plugins."""
