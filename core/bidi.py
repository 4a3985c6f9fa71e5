"""Direction controls made visible in the pages people decide on.

An agent's text can carry Unicode's invisible direction controls (U+202E RIGHT-TO-LEFT OVERRIDE
and its kin): "DROP prod_db \u202ebd_gnigats" is shown as "DROP prod_db staging_db", and two
options that read alike are different values. Every HTML page (the reviewer pages, their live
fragments, the admin) shows each such character as a visible mark, ``⟦U+202E⟧``, in the page's
text; attribute values (what a form sends back, an option's value) and the contents of
``<textarea>``, ``<script>`` and ``<style>`` are left as they are, so what a person submits is
what the agent sent; but the attributes that are read to a person (``aria-label``, ``title``,
``alt``, ``placeholder``: a screen reader's words for a checkbox, a tooltip) show the marks too.
The API answers JSON and is not touched."""
import re

CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# the markup of a page (tags, and the elements whose text is not shown as text) and the text between
_MARKUP = re.compile(r"(<textarea\b.*?</textarea\s*>|<script\b.*?</script\s*>|<style\b.*?</style\s*>|<!--.*?-->|<[^>]*>)",
                     re.S | re.I)


def mark(text: str) -> str:
    return CONTROLS.sub(lambda m: f"⟦U+{ord(m.group()):04X}⟧", text)


# an attribute read to a person, in a tag (not in a textarea's, a script's or a style's contents)
_SHOWN_ATTRIBUTE = re.compile(r"""(\s(?:aria-label|title|alt|placeholder)\s*=\s*)("[^"]*"|'[^']*')""", re.I)


def _shown_in_tag(markup: str) -> str:
    if markup.startswith("<!--") or not CONTROLS.search(markup):
        return markup
    end = markup.find(">") + 1  # the (opening) tag: a textarea's, script's or style's contents stay as they are
    return _SHOWN_ATTRIBUTE.sub(lambda m: m.group(1) + mark(m.group(2)), markup[:end]) + markup[end:]


def shown_in_html(html: str) -> str:
    """``html`` with every direction control in its text, and in the attributes read to a person,
    replaced by its visible mark."""
    if not CONTROLS.search(html):
        return html
    parts = _MARKUP.split(html)
    parts[::2] = [mark(text) for text in parts[::2]]   # split's even items: the text between the markup
    parts[1::2] = [_shown_in_tag(markup) for markup in parts[1::2]]
    return "".join(parts)


def shown_in_response(response):
    """A complete HTML response with its direction controls shown (others as they are)."""
    if response.streaming or not response.get("Content-Type", "").startswith("text/html"):
        return response
    charset = response.charset or "utf-8"
    try:
        html = response.content.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return response
    shown = shown_in_html(html)
    if shown is not html:
        response.content = shown.encode(charset)
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(response.content))
    return response
