"""The coordinator's HTTP side, off by default: /metrics for Prometheus
(`--metrics-port`) and the read-only dashboard (`--web-port`). Both run on the
coordinator's event loop, so they read the services' state without locks."""
