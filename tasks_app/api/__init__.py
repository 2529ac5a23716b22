"""The task REST API (DRF): trigger, watch, cancel and replay tasks; health; FOCUS export."""
