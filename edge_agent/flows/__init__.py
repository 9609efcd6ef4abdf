"""Flows, TCP reassembly and transactions."""
