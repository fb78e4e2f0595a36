"""Public test kit: a sample platform database and the reference license server (DESIGN §1)."""
