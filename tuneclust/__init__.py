"""tuneclust."""
