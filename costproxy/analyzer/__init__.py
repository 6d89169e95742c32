"""Request analysis (sans-IO): what a request asks for and how many tokens it costs.

Each module documents itself; ``encodings`` and ``tokens`` hold the offline tokenizers and
``TokenCounter``.  Import from the modules directly: this package re-exports nothing.
"""
