"""Plasticity modules: how a backbone's weights may change per task."""
