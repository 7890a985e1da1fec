"""The search: the FPTAS, its surrogate error runs, the results store and the Pareto front."""
