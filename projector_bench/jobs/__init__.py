"""One job: its config checked, run, and recorded as a row of the results table."""
