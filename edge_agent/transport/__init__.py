"""Where documents go: the local spool (and MQTT, issue 4)."""
