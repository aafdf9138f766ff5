"""`python -m semsearch` is the `semsearch` command."""

from semsearch.tools.cli import main

raise SystemExit(main())
