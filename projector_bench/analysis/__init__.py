"""From rows to answers: the choice for a budget, agreement with published tables, the report."""
