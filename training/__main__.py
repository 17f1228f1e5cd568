"""``python -m subjectgen_training ...`` and ``accelerate launch -m subjectgen_training train ...`` run the ``subjectgen`` CLI."""

import sys

from subjectgen_training.cli import main

sys.exit(main())
