"""Alerts: budget and request events in, signed webhooks out."""
