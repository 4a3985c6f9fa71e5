"""Words for people: counts in the pages, the admin and messages."""


def plural(n: int, word: str, words: str = "") -> str:
    """"1 task", "3 tasks" (or ``words`` for more than one when an "s" does not make it)."""
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


def has_nul(*values: str) -> bool:
    """Whether a value typed by a person holds U+0000, which PostgreSQL cannot store in text."""
    return any("\x00" in value for value in values)


# A decision form that was not valid, as the admin's and the reviewer pages' decision pages say it.
FORM_ERROR_NOTE = "Nothing was decided: correct the form below."
