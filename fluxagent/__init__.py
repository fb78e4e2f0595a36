"""fluxagent: the licensing and telemetry agent of the FluxBilling Self-Hosted Edition."""

__version__ = "0.2.0"
