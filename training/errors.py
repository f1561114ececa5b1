"""Errors that say "the input is wrong": retrying cannot help, so Ray Train must not retry them.

:class:`InputError` is what the CLI's pre-flight checks raise (printed as ``e3d <cmd>: error: ...``, exit 2).
:data:`NON_RETRYABLE` lists the exception types that mean bad input when they come out of a training worker:
``training.ray_train`` stops the run on the first of them instead of restarting the workers
``max_failures`` times, and re-raises it on the driver as an :class:`InputError`.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (option, file, dataset) found before or during a run; the same input fails again on retry."""


#: Exception types that, raised by the training function, mean bad input: a config or checkpoint that does not
#: fit, a missing file or split, an unknown name. ``RuntimeError``/``OSError`` in general (a lost worker, a
#: network error, an injected fault) stay retryable.
NON_RETRYABLE: tuple[type[BaseException], ...] = (ValueError, LookupError, TypeError, FileNotFoundError,
                                                  NotADirectoryError, IsADirectoryError)
