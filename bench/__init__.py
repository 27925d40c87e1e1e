"""Benchmark of intent-router against the real service on loopback: ``python -m bench``.

Three figures, each measured against a freshly started ``intent-router serve`` with its
own temporary SQLite database and a real webhook receiver in a separate process:

1. full-pipeline throughput of batch ingest (events/s);
2. single-event ingest (requests/s, p50/p99 request latency) at 64 in flight;
3. event → webhook latency at a fixed, open-loop offered rate (after a short 50 events/s
   baseline that shows the latency floor).

``--quick`` is a ~30 s smoke run; ``--profile`` samples the service with py-spy per phase.
"""
