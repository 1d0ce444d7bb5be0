"""The command line: parser, commands and rendering."""
