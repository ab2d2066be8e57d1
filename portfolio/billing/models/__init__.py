"""Billing's own tables: the price book, the ledger the meters write, statements and budgets.

Billing sits below serving and training: they write metered quantities here through billing's services
(ids and names as plain values, no foreign key upward), and billing computes from its own tables.
"""

from portfolio.billing.models.budgets import Budget, BudgetAlert
from portfolio.billing.models.ledger import ComputeInterval, StorageDay, TokenDay, TokenUsage
from portfolio.billing.models.prices import Price
from portfolio.billing.models.statements import Statement, StatementLine

__all__ = [
    "Budget",
    "BudgetAlert",
    "ComputeInterval",
    "Price",
    "Statement",
    "StatementLine",
    "StorageDay",
    "TokenDay",
    "TokenUsage",
]
