"""Built-in caches plugins."""
