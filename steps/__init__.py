"""The MLproject entry points: one module per step (see MLproject)."""
