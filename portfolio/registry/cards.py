"""Model cards: Markdown rendered to HTML that is safe to show (no scripts, no event handlers, no styles).

Images are not rendered at all, only their alt text: the CSP lets a page load images from its own site
only, so the one image a card could show is a URL of this site, and the browser fetches it with the
viewer's session the moment the page opens: a GET with side effects (exports were, until they became
POSTs) would run in the name of whoever looked at the model. Links stay: following one takes a click.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml


def _image_as_alt_text(renderer, tokens, idx, options, env) -> str:
    """``![alt](url)`` becomes just ``alt``; the URL is never fetched (see the module docstring)."""
    return escapeHtml(renderer.renderInlineAsText(tokens[idx].children, options, env))


_markdown = (
    MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").enable("strikethrough")
)
_markdown.add_render_rule("image", _image_as_alt_text)

ALLOWED_TAGS = {
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "li",
    "strong",
    "em",
    "code",
    "pre",
    "blockquote",
    "a",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "hr",
    "br",
    "s",
    "del",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "th": {"align"},
    "td": {"align"},
}


def render(markdown_text: str) -> str:
    """Raw HTML in the card is not rendered at all; the result is sanitised again as a second fence."""
    html = _markdown.render(markdown_text or "")
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def generated_card(version) -> str:
    """A starting card for versions that come without one."""
    lines = [f"# {version.label}", ""]
    if version.model.description:
        lines += [version.model.description, ""]
    facts = [
        ("Kind", version.get_kind_display()),
        (
            "Source",
            f"{version.get_source_display()} `{version.source_ref}`"
            if version.source_ref
            else version.get_source_display(),
        ),
        ("Architecture", version.architecture or "—"),
        ("Parameters", f"{version.parameter_count:,}" if version.parameter_count else "—"),
        ("Context length", str(version.context_length or "—")),
        ("License", version.model.license or "—"),
    ]
    lines += [f"- **{k}:** {v}" for k, v in facts]
    return "\n".join(lines)
