"""Repository-level pytest configuration: shared fixtures live in plugins under tests/."""

pytest_plugins = ["tests.batch_emulator.pytest_plugin"]
