"""The policy model: AARE matching, effective policy, per-VM and named rules."""
