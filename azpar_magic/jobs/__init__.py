"""The job model: a Job's states, its snapshots, the handle itself, and how its values are decoded and combined.

This layer imports only errors and the worker's wire format; everything that runs, stores or shows a job
builds on it.
"""
