"""Storage: the store interface and the in-memory store, the Redis store and client, Redis
key names, trained model versions in Redis and their publishing."""
