"""``python -m updetr_lite ...``: the ``updetr-lite`` command (updetr_lite/cli/)."""

from .cli import main

raise SystemExit(main())
