"""One exception type for bad user input: command-line entry points print it as one line."""


class MMAdapterError(ValueError):
    """A problem with something the user gave us (a file, a spec, a flag), phrased as one line."""
