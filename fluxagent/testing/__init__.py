"""Public test kit: a sample platform database and the reference license server (docs/ARCHITECTURE.md, "The layout")."""
