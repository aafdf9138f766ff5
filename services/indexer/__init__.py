"""The indexer: sharded FAISS index service with a write-ahead log and snapshots."""
