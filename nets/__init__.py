"""fcnwild.nets."""
