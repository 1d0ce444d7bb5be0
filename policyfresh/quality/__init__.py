"""Quality: golden cases, evaluation, the release gate, table checks, reports and status."""
