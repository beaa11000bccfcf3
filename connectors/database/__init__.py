"""Database events: poll a table of a reporting database by a high-water mark (systems that offer only that)."""
