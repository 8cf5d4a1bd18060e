"""Built-in candidates plugins."""
