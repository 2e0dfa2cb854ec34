"""Leaves: errors, settings, the environment, small helpers, budgets, study storage."""
