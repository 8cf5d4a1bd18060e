"""Linear blend scorer: weighted sum of other scorers' normalized scores."""
