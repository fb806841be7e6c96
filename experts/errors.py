"""Errors caused by the user's input (a config, an argument, a model reference, a dataset name).

The musketeers CLI reports any MusketeersError as one line on stderr and exits with code 2; anything
else is a bug and keeps its traceback. The class lives here, in the package that imports neither
of the others, so that an expert that fails to load is a user error too; the learner takes it from
musketeers/errors.py.
"""


class MusketeersError(Exception):
    """A bad input, with a one-line message naming the culprit and what would be valid."""
