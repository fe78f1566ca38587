"""Tests of the documentation: README.md and docs/*.md name only modules, flags, paths and commands that exist."""
