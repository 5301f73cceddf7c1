"""Worked ports that use this toolkit from outside, as a porter would; nothing in the cores imports them."""
