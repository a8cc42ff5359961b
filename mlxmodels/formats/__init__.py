"""Readers for the files a model folder holds. Nothing else opens a weight file: every path (load, info, convert)
comes through here, so every path validates the same way (see folder.py for what a folder may name)."""
