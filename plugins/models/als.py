"""als model plugin (trainer, candidate generator and scorer)."""
