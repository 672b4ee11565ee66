"""The one exception type users see: a one-line message, exit code 2, no traceback."""


class AhaError(Exception):
    """Bad input (a file, a line, a field, a config key). The CLI prints `aha: <message>` and exits 2."""


def closest(name: str, choices) -> str:
    """' (did you mean X?)' for the nearest valid name, or '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
