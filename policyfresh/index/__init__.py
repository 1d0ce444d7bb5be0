"""Index: chunk documents, hold back failing ones, embed, keep the vector table in step."""
