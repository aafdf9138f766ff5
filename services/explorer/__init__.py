"""The explorer: a web app over the gateway's public API (search, results, the embedding map)."""
