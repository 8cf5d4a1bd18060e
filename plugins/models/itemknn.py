"""itemknn model plugin (trainer, candidate generator and scorer)."""
