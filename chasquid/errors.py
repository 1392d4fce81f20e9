"""The project's error base class."""


class ChasquidError(Exception):
    """An error with a message fit to show a person as it is."""
