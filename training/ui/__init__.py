"""``subjectgen ui``: a Gradio app that takes a person from photos to pictures without a terminal.

Modules, one job each: :mod:`.forms` derives the training form from the ``subjectgen train`` parser and
:class:`training.train_config.TrainConfig`; :mod:`.uploads` checks and stores uploaded photos; :mod:`.workdir` lays out
the work folder exactly as the CLI writes it; :mod:`.jobs` runs one training at a time in a background thread;
:mod:`.app` builds the ``gr.Blocks`` page.
"""
