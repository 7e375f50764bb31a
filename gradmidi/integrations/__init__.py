"""Callbacks for training frameworks: ``gradmidi.integrations.lightning`` and ``.transformers``.

Each module imports its framework only when it is imported itself.
"""
