"""Which cookbook recipe pays for counts: the recipe table over the single-cell protocol."""
