"""One exception type for every bad input the engine rejects.

Each message says what is wrong and what to do instead; the CLI prints it on one line
and exits non-zero, the app shows it in an error box.
"""


class ScheduleLabError(ValueError):
    """Bad input: a wrong schedule, an unknown name, a missing or corrupt file, a NaN."""


def unknown_name(kind: str, name: str, choices) -> ScheduleLabError:
    """Error for an unknown registry name, listing the valid choices."""
    return ScheduleLabError(
        f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(choices))}")
