"""Durable file jobs: readers and writers per format, the job store, the runner, the CLI."""
