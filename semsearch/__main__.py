"""`python -m semsearch` is the `semsearch` command."""

from semsearch.cli import main

raise SystemExit(main())
