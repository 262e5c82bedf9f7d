"""The Migration Hub adapter: the boto3 client and its reads, the error taxonomy, what the Hub
shows for a task, the rate limiter and the request types the outbox's rows become."""
