"""Offline work: interactions and datasets, training, evaluation, batch recommendation (also
on Ray), reports, the demo shop, the click simulator and progress bars."""
