"""fcnwild.tools."""
