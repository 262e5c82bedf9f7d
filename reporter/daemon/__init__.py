"""The daemon (`run`): the service that owns the outbox lock and the schedule, and its roles —
the supervisor (threads, stop, reload), the publisher (passes), upkeep (pruning, task health),
the outbox's health, the live-state writer — and the metrics listener."""
