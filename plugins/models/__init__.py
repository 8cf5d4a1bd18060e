"""Built-in model plugins: each contributes a trainer plus the serving components it enables."""
