"""Plumbing every job shares: staged outputs, the job's log file, GPU leases."""
