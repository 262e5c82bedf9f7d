"""Delivery: from the outbox to the Hub. The relay runs a pass: intake judges new rows, the gate
knows whether writes may go out (home Region, access), the courier sends a task's calls in
order, repair rounds read the Hub back; retry and backoff, conditions (logs), clock steps,
replicas and the parts a delivering process is built from."""
