"""End-to-end tests: the exporter, a real Prometheus, the alert rules and the dashboard."""
