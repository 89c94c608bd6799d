"""What every command line here shares: absl flag parsing with a one-line error for a bad config field."""

import ast

from absl import flags


def parse_flags(argv):
    """absl's parsing, with a misspelt or ill-typed config field reported in one line instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
        text = str(e)
        if text[:1] in "'\"":  # config_flags wraps a KeyError's repr in an AttributeError
            text = ast.literal_eval(text)
        message = " ".join(text.split())
        raise SystemExit(f"error: bad flag or config field: {message}") from None
