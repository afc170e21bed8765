"""Publisher-only queues: services import these and call ``.add()``; they never run jobs."""
