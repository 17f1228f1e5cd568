"""``subjectgen push``: publish a subject folder on the Hugging Face Hub with a rendered model card."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subject", type=Path, help="subject folder (subject_config.json + subject.safetensors)")
    parser.add_argument("repo_id", help="Hub repository, owner/name")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--commit-message", default=None,
                        help="default: 'Upload subject <folder name> with subjectgen-diffusers'")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of pushing to the branch")
    parser.add_argument("--card-only", action="store_true", help="only write README.md (the model card) into the folder")


def run(args: argparse.Namespace) -> int:
    from subjectgen_diffusers.atomic_io import atomic_write_text
    from subjectgen_diffusers.hub import push_subject_to_hub, render_subject_card

    if args.card_only:
        print(atomic_write_text(args.subject / "README.md", render_subject_card(args.subject, args.repo_id)))
        return 0
    info = push_subject_to_hub(
        args.subject, args.repo_id, private=args.private or None, revision=args.revision,
        commit_message=args.commit_message, create_pr=args.create_pr,
    )
    print(getattr(info, "commit_url", info))
    return 0
