"""Errors caused by the user's input (a config, an argument, a model reference, a dataset name).

The CLI reports any MusketeersError as one line on stderr and exits with code 2; anything else is
a bug and keeps its traceback.
"""


class MusketeersError(Exception):
    """A bad input, with a one-line message naming the culprit and what would be valid."""
