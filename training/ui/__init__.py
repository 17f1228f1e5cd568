"""``subjectgen ui``: a Gradio app that takes a person from photos to pictures without a terminal.

Modules, one job each: :mod:`.forms` derives the training form from :class:`subjectgen_training.trainer.config.TrainConfig`'s
field definitions (the ones ``subjectgen train``'s flags are generated from); :mod:`.uploads` checks and stores
uploaded photos; :mod:`.workdir` lays out the work folder exactly as the CLI writes it; :mod:`.jobs` runs one training
at a time in a background thread; :mod:`.pipeline` keeps the generation pipeline and the subject loaded into it;
:mod:`.scores` puts ``subjectgen evaluate``'s identity and prompt scores under the images; :mod:`.app` builds the
``gr.Blocks`` page.
"""
