"""Benchmark of intent-router against the real service on loopback: ``python -m bench``.

Embedded mode, against a freshly started ``intent-router serve`` with its own temporary
SQLite database and a real webhook receiver in a separate process:

1. full-pipeline throughput of batch ingest (events/s);
2. single-event ingest (requests/s, p50/p99 request latency) at 64 in flight;
3. event → webhook latency, every event routed, at a fixed open-loop offered rate (after
   a short 50 events/s baseline that shows the latency floor);
4. event → webhook latency in a realistic mix: 1 in 20 events makes a new lead hot.

Then, with no service running, the CPU µs per webhook of the dispatcher's HTTP transport
(T), and delivery throughput with a dead endpoint on fresh services (D).

Kafka mode, when a broker is available (``.services`` reused, else ``deploy/services.sh
up`` in the temporary directory; otherwise skipped with the reason), the service still on
an embedded SQLite database:

5. the raw aiokafka consume rate on the same broker (the ceiling);
6. pipeline throughput of the service's consumer on a keyed backlog, and its share of 5;
7. event → webhook latency through Kafka (HTTP ingest produces, the consumer applies).

``--quick`` is a ~1 min smoke run; ``--profile`` samples the service with py-spy per phase;
``--no-kafka`` skips 5-7b; ``--only`` runs one group of phases.
"""
