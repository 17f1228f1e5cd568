"""What a training run checks before any model loads: every person's photos, the regularisation images, the
method's own files and the optional packages the config asks for (:func:`check_inputs`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from subjectgen_diffusers.errors import SubjectgenError
from subjectgen_diffusers.public_names import public_name
from subjectgen_training.trainer.config import TrainConfig

logger = logging.getLogger("subjectgen_training.trainer.loop")
RECOMMENDED_PHOTOS = 4  # the low end of the 4-20 photos the references and --help ask for


@dataclass
class TrainingData:
    photos: list  # every person's photos, in the order of config.people()
    reg_photos: list | None
    photo_subject: list[int] | None = None  # which person each photo shows (index into config.people())

    def __post_init__(self) -> None:
        if self.photo_subject is None:
            self.photo_subject = [0] * len(self.photos)


def check_inputs(config: TrainConfig, method) -> TrainingData:
    """Everything that can be checked without loading a model: photos, regularisation images, the method's files."""
    from subjectgen_training.data.photos import load_photo_folder

    photos, photo_subject = [], []
    for index, person in enumerate(config.people()):
        found = load_photo_folder(person.photos, what="--photos", resolution=config.resolution)
        if len(found) < RECOMMENDED_PHOTOS:
            logger.warning("--photos: only %d usable photo(s) in %s; the methods are made for %d-20 photos of the "
                           "person (varied poses and backgrounds): with fewer, the subject tends to copy them",
                           len(found), public_name(person.photos), RECOMMENDED_PHOTOS)
        photos += found
        photo_subject += [index] * len(found)
    reg = load_photo_folder(config.reg_dir, what="--reg-dir", resolution=config.resolution) if config.reg_dir else None
    drawn_from = sorted({p.caption for p in reg or [] if p.caption and p.caption != config.class_prompt})
    if drawn_from:
        logger.warning("--reg-dir: class images drawn from %s train under the class prompt %r, as in both "
                       "references; set --class-prompt to the prompt that drew them if that is what you meant",
                       drawn_from[:3], config.class_prompt)
    method.check_inputs()
    if config.use_8bit_adam:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise SubjectgenError("--use-8bit-adam needs a CUDA GPU and the bitsandbytes package (pip install "
                                  "bitsandbytes); drop the flag to use torch's AdamW.")
    if config.log_with == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise SubjectgenError("--log-with tensorboard needs the tensorboard package: pip install tensorboard.")
    if config.mask_loss and not any(p.mask is not None for p in photos):
        logger.warning("--mask-loss: %s has no face masks (run `subjectgen prepare`); the loss stays unweighted", config.photos)
    return TrainingData(photos, reg, photo_subject)
