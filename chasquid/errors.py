"""The project's error base class."""


class ChasquidError(Exception):
    """An error with a message fit to show a person as it is."""


def os_reason(e: OSError) -> str:
    """The C library message of an OS error with a lower-case start, as Go renders it."""
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]
