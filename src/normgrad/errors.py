"""The one exception type users need to catch."""


class NormGradError(ValueError):
    """Bad input to normgrad: the message says what was wrong and what is valid."""
