"""Internals of the chapter-exercise experiments (issue 4)."""
