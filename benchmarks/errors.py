"""The platform's one error type for bad user input (datasets, configs, flags, addresses)."""


class InputError(Exception):
    """Something the user gave is wrong; the message names the input and the fix on one line.

    The CLI prints it without a traceback and exits with code 2.
    """
