"""One status badge for every status a page shows.

A status's tone (the colour of its badge) is carried by its choices: ``@badges.toned("job", succeeded="ok",
...)`` on a ``TextChoices`` class sets ``JobStatus.tones`` and makes the badge known by the short name that
templates use: ``{% load badges %}{% status_badge "job" job.status title=job.status_detail %}``. A value
the mapping leaves out is muted. Apps register their own statuses, so this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TONES = frozenset({"ok", "info", "warn", "danger", "muted"})
DEFAULT_TONE = "muted"


@dataclass(frozen=True)
class Badge:
    choices: type
    tones: dict[str, str]
    # The words on the badge where they are not the value itself ("ok" reads "verified").
    labels: dict[str, str] = field(default_factory=dict)

    def tone(self, value) -> str:
        return self.tones.get(str(value), DEFAULT_TONE)

    def label(self, value) -> str:
        return self.labels.get(str(value), str(value))


BADGES: dict[str, Badge] = {}


def toned(kind: str, *, labels: dict[str, str] | None = None, **tones: str):
    """Class decorator for a ``TextChoices``: the tone of each value's badge, known as ``kind``."""

    def decorate(choices):
        values = set(choices.values)
        unknown = (set(tones) | set(labels or {})) - values
        if unknown:
            raise ValueError(f"{choices.__name__} has no value {sorted(unknown)} to give a badge tone to.")
        wrong = set(tones.values()) - TONES
        if wrong:
            raise ValueError(f"{sorted(wrong)} are not badge tones; use one of {sorted(TONES)}.")
        known = BADGES.get(kind)
        if known is not None and known.choices.__qualname__ != choices.__qualname__:
            raise ValueError(f"The badge {kind!r} is already {known.choices.__name__}'s.")
        setattr(choices, "tones", dict(tones))  # noqa: B010 (an Enum class takes no annotated attribute)
        BADGES[kind] = Badge(choices, dict(tones), dict(labels or {}))
        return choices

    return decorate


def badge(kind: str) -> Badge:
    """The badge registered as ``kind``; an unknown kind is a programming error (``KeyError``)."""
    try:
        return BADGES[kind]
    except KeyError:
        raise KeyError(f"No status badge {kind!r}; known: {sorted(BADGES)}.") from None
