"""Solver-schedule search (USF / S3)."""
