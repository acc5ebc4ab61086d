"""fcnwild.data."""
