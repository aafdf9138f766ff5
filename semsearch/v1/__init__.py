"""Generated protobuf and gRPC stubs for the semsearch.v1 API (scripts/gen-protos.sh)."""
