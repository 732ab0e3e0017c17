"""The placement daemon: a local OpenAI-compatible proxy that sends each request
to the best site right now (placement + live signals), fails over before the
first byte, sheds load with 429, and exposes Prometheus metrics."""
