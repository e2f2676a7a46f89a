"""``python -m updetr_lite.cli ...`` (as torchrun runs it): the ``updetr-lite`` command."""

from . import main

raise SystemExit(main())
