"""What a person can see of a text: required reasons, options and answers are checked with it."""
import pytest

from core.text import seen_as, visible_text


@pytest.mark.parametrize("text", ["", None, "   ", "\u200b", "\ufeff", "\u2800", "\u3164", " \u200d\u2060 ",
                                  "\u00a0\u3000", "\u202e", "\ufe0f", "\U000e0100"])
def test_nothing_visible_is_blank(text):
    assert visible_text(text) == ""


@pytest.mark.parametrize("text, kept", [(" Too broad ", "Too broad"), ("\u200bx", "\u200bx"), ("é", "é"),
                                        ("\u05e2\u05d1", "\u05e2\u05d1"), ("\U0001f6e0", "\U0001f6e0")])
def test_visible_text_is_kept_as_written(text, kept):
    assert visible_text(text) == kept


def test_texts_that_read_alike_are_seen_as_one():
    assert seen_as("yes") == seen_as("yes\u200b") == seen_as("\ufeffyes") == seen_as("yes\ufe0f")
    assert seen_as("\u00e9") == seen_as("e\u0301")
    assert seen_as("Yes") != seen_as("yes") and seen_as("eu") != seen_as("us")
