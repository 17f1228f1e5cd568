"""``python -m training ...`` and ``accelerate launch -m training train ...`` run the ``subjectgen`` CLI."""

import sys

from training.cli import main

sys.exit(main())
