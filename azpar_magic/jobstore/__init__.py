"""The job store: manifests and records on disk, so that a job outlives the kernel that started it."""
