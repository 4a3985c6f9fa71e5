"""Words for people: counts in the pages, the admin and messages."""


def plural(n: int, word: str) -> str:
    """"1 task", "3 tasks"."""
    return f"{n} {word}{'' if n == 1 else 's'}"
