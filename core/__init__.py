"""The bottom layer: settings, metric definitions, data contracts and topic/table names.

Everything may import it; it imports nothing of ours.
"""
