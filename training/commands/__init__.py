"""One module per ``subjectgen`` subcommand: argument parsing only, the work happens in typed functions."""
