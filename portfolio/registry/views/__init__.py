"""Web pages of the model registry: the catalogue and a model's page (``catalogue``), imports and adapter
uploads (``imports``), a version's page with its promotion, verification, archiving and chat template (``versions``),
removing an alias (``aliases``), and two versions side by side (``compare``).

Every view decides access with the gate: a model the actor may not see answers 404 (``gate.get_visible``),
a change needs its capability (``gate.require``), else 403; the docstrings say which. Changes go through
``registry.services``; a ``DomainError`` becomes a form error or a message, while ``NotFound`` and
``Forbidden`` propagate to Django's 404 and 403 pages.

The views are named here for ``registry.urls``.
"""

from portfolio.registry.views.aliases import alias_remove
from portfolio.registry.views.catalogue import model_create, model_detail, model_edit, model_list
from portfolio.registry.views.compare import model_compare
from portfolio.registry.views.imports import adapter_upload, model_import
from portfolio.registry.views.versions import (
    version_archive,
    version_chat_template,
    version_detail,
    version_merge,
    version_progress,
    version_promote,
    version_purge,
    version_verify,
)

__all__ = [
    "adapter_upload",
    "alias_remove",
    "model_compare",
    "model_create",
    "model_detail",
    "model_edit",
    "model_import",
    "model_list",
    "version_archive",
    "version_purge",
    "version_chat_template",
    "version_detail",
    "version_merge",
    "version_progress",
    "version_promote",
    "version_verify",
]
