"""User-facing errors: one line that says what went wrong and what to do."""


class CtsftError(Exception):
    """An error the user can fix (bad config, missing file, unknown language).

    Entry points catch it and print `error: <message>` without a traceback.
    """
