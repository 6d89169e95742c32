"""The versioned admin and integration API under ``/api/v1``."""
