"""What several test modules share, so that no test module imports another: real servers
on loopback (``harness``), HTTP scenarios over a running service (``scenarios``), and the
domain objects and migrated databases of the unit tests (``domain``)."""
