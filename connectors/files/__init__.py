"""Flat files (CSV, fixed width) in and out, from a local folder or an SFTP server."""
