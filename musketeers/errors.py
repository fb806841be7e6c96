"""Errors caused by the user's input: the CLI reports any MusketeersError as one line on stderr and
exits with code 2; anything else is a bug and keeps its traceback.

The class is defined in experts/errors.py (experts import nothing from musketeers, and their load
errors must reach the CLI the same way); the learner's modules import it from here.

It imports only experts.errors.
"""

from experts.errors import MusketeersError

__all__ = ["MusketeersError"]
