"""Ingest: read sources, parse files, tag governance, detect and redact PII, write documents."""
