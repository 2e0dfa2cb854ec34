"""What a design costs: parameters, MACs, latency (eager, roofline, device estimates, ExecuTorch)."""
