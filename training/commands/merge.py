"""``subjectgen merge``: several subjects into one, by Custom Diffusion's constrained merge
(:func:`subjectgen_diffusers.merge.merge_subjects`)."""

from __future__ import annotations

import argparse
from pathlib import Path

OUT_IS_FOLDER = True  # cli.check_out_is_folder refuses an existing file there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subjects", nargs="+", type=Path, metavar="SUBJECT", help="two or more subject folders")
    parser.add_argument("--out", type=Path, required=True, help="new folder for the merged subject")
    parser.add_argument("--base", default=None,
                        help="the subjects' base model (diffusers folder, Hub id or builtin:NAME); default: the base "
                             "the subjects record")
    parser.add_argument("--tokens", nargs="+", default=None, metavar="TOKEN",
                        help="the token each person gets in the merged subject, one per SUBJECT in their order, e.g. "
                             "--tokens '<alice>' '<bob>' (default: the tokens they were trained with, which must differ)")
    parser.add_argument("--class-prompt", action="append", default=None, dest="class_prompts",
                        help="class phrase of the regularisation captions, e.g. 'a person' (repeatable; default: each "
                             "subject's recorded class prompt, else 'a person')")


def run(args: argparse.Namespace) -> int:
    from subjectgen_diffusers.compress import check_new_folder
    from subjectgen_diffusers.errors import SubjectgenError
    from subjectgen_diffusers.merge import check_mergeable, merge_subjects, read_for_merge, with_token
    from subjectgen_diffusers.subject_check import check_subject
    from subjectgen_training.models.builtin_models import resolve_model
    from subjectgen_training.prompts import class_phrases, regularization_captions

    check_new_folder(args.out)
    sources = [read_for_merge(path) for path in args.subjects]
    if args.tokens is not None:
        if len(args.tokens) != len(sources):
            raise SubjectgenError(f"--tokens gives one token per subject, in their order: {len(sources)} subjects, "
                                  f"{len(args.tokens)} tokens.")
        bad = [token for token in args.tokens if not token or any(c.isspace() for c in token)]
        if bad:
            raise SubjectgenError(f"--tokens: a token is one word without spaces, got {bad[0]!r}.")
        sources = [with_token(source, token) for source, token in zip(sources, args.tokens)]
    check_mergeable(sources)  # before the model loads
    base = args.base or sources[0].subject.config.base_model
    try:
        base_path = resolve_model(base)
        for path in args.subjects:
            check_subject(path, base_path)
        from subjectgen_diffusers import SubjectPipeline  # after every check: importing diffusers takes seconds

        pipe = SubjectPipeline.from_pretrained(base_path, safety_checker=None, feature_extractor=None,
                                               requires_safety_checker=False)
    except (OSError, ValueError) as error:
        if args.base:
            raise
        # the subjects record their base by name only (a local folder's name): say how to give it
        raise SubjectgenError(f"cannot use the base model the subjects record, {base!r} ({error}); pass --base with "
                              "that model's diffusers folder or Hub id (builtin:toy-base for the toy model).") from error
    captions = regularization_captions(class_phrases([s.subject for s in sources], args.class_prompts))
    merged = merge_subjects(pipe, [s.subject for s in sources], regularization_captions=captions, out=args.out)
    report = merged.config.training["merge"]
    tokens = " ".join(token for token, _ in merged.config.tokens)
    print(f"{args.out}: tokens {tokens}; {len(merged.config.layers)} layers merged on {len(captions)} "
          f"regularisation captions; largest relative constraint error {report['max_relative_constraint_error']:.2e}")
    return 0
