"""Storage: the store interface, the in-memory and Redis stores and the opener that picks one,
the Redis client, Redis key names, trained model versions in Redis and their publishing."""
