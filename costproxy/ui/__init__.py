"""The web console's browser assets (package data): page shells in ``pages/``, scripts and styles in
``static/``, third-party files vendored by ``scripts/vendor-ui-assets`` in ``static/vendor/``."""
