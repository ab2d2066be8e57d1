"""What the organisation pages' tests share: the header of an htmx request and a response's text."""

HTMX = {"HTTP_HX_REQUEST": "true"}


def _text(response) -> str:
    return response.content.decode()
