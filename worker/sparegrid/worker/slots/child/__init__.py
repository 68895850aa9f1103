"""The process boundary. `runner` (daemon side) starts and watches the child, `main` is
the child process itself, `protocol` the frames they exchange, `frames` the daemon's
untrusting decoder of what the child sends, and `sandbox` what the child applies to itself
before it runs job code."""
