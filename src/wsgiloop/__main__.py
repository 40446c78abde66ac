"""``python -m wsgiloop`` is the ``wsgiloop`` command."""

from .cli import main

raise SystemExit(main())
