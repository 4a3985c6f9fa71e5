"""Money and tokens as people read them, for the admin's own templates (``{% load core_text %}``);
the reviewer pages' ``review_format`` registers the same functions (core.text)."""
from django import template

from core.text import money, money_text, tokens

register = template.Library()
register.filter("money", money)
register.filter("tokens", tokens)
register.filter("money_text", money_text)
