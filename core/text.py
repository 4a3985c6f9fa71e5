"""Words for people: counts in the pages, the admin and messages."""


def plural(n: int, word: str) -> str:
    """"1 task", "3 tasks"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def has_nul(*values: str) -> bool:
    """Whether a value typed by a person holds U+0000, which PostgreSQL cannot store in text."""
    return any("\x00" in value for value in values)
