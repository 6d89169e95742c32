"""Budgets: the model, periods and status, reports, the JSON codec, and the accounts that enforce them."""
