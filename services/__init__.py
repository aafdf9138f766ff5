"""The semsearch services: embedder (Triton), indexer (FAISS shards) and gateway."""
