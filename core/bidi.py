"""Direction controls made visible in the pages people decide on.

An agent's text can carry Unicode's invisible direction controls (U+202E RIGHT-TO-LEFT OVERRIDE
and its kin): "DROP prod_db \u202ebd_gnigats" is shown as "DROP prod_db staging_db", and two
options that read alike are different values. Every HTML page (the reviewer pages, their live
fragments, the admin) shows each such character as a visible mark, ``⟦U+202E⟧``, in the page's
text; attribute values (what a form sends back, an option's value) and the contents of
``<textarea>``, ``<script>`` and ``<style>`` are left as they are, so what a person submits is
what the agent sent. The API answers JSON and is not touched."""
import re

CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# the markup of a page (tags, and the elements whose text is not shown as text) and the text between
_MARKUP = re.compile(r"(<textarea\b.*?</textarea\s*>|<script\b.*?</script\s*>|<style\b.*?</style\s*>|<!--.*?-->|<[^>]*>)",
                     re.S | re.I)


def mark(text: str) -> str:
    return CONTROLS.sub(lambda m: f"⟦U+{ord(m.group()):04X}⟧", text)


def shown_in_html(html: str) -> str:
    """``html`` with every direction control in its text replaced by its visible mark."""
    if not CONTROLS.search(html):
        return html
    parts = _MARKUP.split(html)
    parts[::2] = [mark(text) for text in parts[::2]]   # split's even items: the text between the markup
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
