"""Errors a user can fix. Each message says what is wrong and what to change; the CLI prints them without a trace."""


class SubjectgenError(ValueError):
    """Base class of every user-facing error raised by subjectgen-diffusers and its training tools."""
