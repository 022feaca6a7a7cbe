"""Risk administration shared by the risk gate, the API's operations endpoints and ``oms risk``: the limits,
the restrictions and halts, and the changes to them (audited)."""
