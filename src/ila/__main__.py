"""`python -m ila` runs the command-line interface."""

from ila.cli import main

raise SystemExit(main())
