"""`lpusim sim`: run a Program file."""
