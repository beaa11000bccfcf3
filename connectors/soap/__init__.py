"""SOAP (zeep)."""
