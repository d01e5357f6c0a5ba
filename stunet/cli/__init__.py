"""The console commands (``stunet-*``): argument parsing, loops over folders, progress and one-line errors; the
work is done by the rooms below.

May import: every room.
"""
