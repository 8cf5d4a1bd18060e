"""Built-in scorers plugins."""
