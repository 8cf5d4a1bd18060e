"""Learning from feedback: slates joined with their outcomes, exploration of served slates,
off-policy estimates and the learned ranker's features and training."""
