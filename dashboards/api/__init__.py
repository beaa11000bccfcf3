"""REST API of the KPIs."""
