"""Run the local Triton embedder in the foreground: `python -m services.embedder`."""

from semsearch.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["embedder", "up"]))
