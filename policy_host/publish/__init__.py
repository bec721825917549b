"""Publishing: the apply planner and executor, and the DNS UPDATE client."""
