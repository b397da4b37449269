"""``python -m guardpool`` is the ``guardpool`` command."""

from guardpool.cli import main

raise SystemExit(main())
