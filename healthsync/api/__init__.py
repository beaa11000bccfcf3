"""The REST API (/api/v1/): token auth for API clients, role permissions and scopes, problem-detail errors."""
