"""ease model plugin (trainer, candidate generator and scorer)."""
