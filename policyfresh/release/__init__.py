"""Release: publish, roll back and erase versions of the served index."""
