"""fcnwild.solvers."""
