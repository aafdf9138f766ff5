"""The gateway: the public gRPC API, embedding, shard fan-out, Redis caching."""
