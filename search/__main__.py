"""`python -m search` is the `ticket-search` command."""

from search.cli import main

raise SystemExit(main())
