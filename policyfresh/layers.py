"""The core's layer packages from the bottom up: each imports only the layers below it."""

LAYERS = ("store", "ingest", "index", "release", "serve", "quality", "cli")
