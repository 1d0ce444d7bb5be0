"""Serve: answer questions from the served release, keep receipts, report the impact of changes."""
